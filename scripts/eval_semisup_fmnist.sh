eval_semisup.py \
# Fine-tune the Fashion-MNIST demo's checkpoint (bash scripts/demo_fmnist.sh) on its 1% labels (600 images) on
# the CPU: the ImageNet recipe's optimiser and schedule at 28 px, a short run.
# python job_launcher.py --method eval_semisup --script_file scripts/eval_semisup_fmnist.sh --num_gpus 0 \
#     --data_dir data/fashion-mnist -- --pretrained EXP/checkpoint.pth
--data_path data/fashion-mnist \
--labels_perc 1 \
--pretrained /path/to/checkpoint.pth \
--checkpoint_key student \
--arch cnn6w2 \
--hidden_mlp 512 \
--load_hidden_mlp true \
--crop_size 28 \
--val_resize 0 \
--val_crop 0 \
--mean 0.286 0.286 0.286 \
--std 0.353 0.353 0.353 \
--epochs 10 \
--batch_size 64 \
--val_batch_size 1000 \
--lr 0.02 \
--lr_last_layer 0.02 \
--final_lr 0 \
--warmup_epochs 0 \
--wd 0 \
--workers 1 \
--log_freq 5
