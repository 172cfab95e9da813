eval_linear.py \
# Linear probe of the Fashion-MNIST demo's checkpoint (bash scripts/demo_fmnist.sh) on all 60,000 training
# images on the CPU: the ImageNet recipe's classifier and optimiser at 28 px, 2 epochs of batch 256.
# python job_launcher.py --method eval_linear --script_file scripts/eval_linear_fmnist.sh --num_gpus 0 \
#     --data_dir data/fashion-mnist -- --pretrained EXP/checkpoint.pth
--data_path data/fashion-mnist \
--pretrained /path/to/checkpoint.pth \
--checkpoint_key student \
--arch cnn6w2 \
--crop_size 28 \
--val_resize 0 \
--val_crop 0 \
--mean 0.286 0.286 0.286 \
--std 0.353 0.353 0.353 \
--global_pooling true \
--use_bn false \
--epochs 2 \
--batch_size 256 \
--val_batch_size 1000 \
--lr 0.3 \
--wd 1e-6 \
--scheduler_type cosine \
--final_lr 0 \
--workers 1 \
--log_freq 50
