eval_semisup.py \
# Fine-tuning on 1% of ImageNet's labels with the release's eval_semisup.py defaults (50 epochs, batch 64 per
# GPU on 8 GPUs, SGD momentum 0.9, cosine from --lr to 0, no weight decay); --lr / --lr_last_layer as SwAV's
# README gives them for 1%. Under this cosine schedule the release gives the head the trunk's lr, so
# --lr_last_layer takes effect only with --apply_lr_last_layer true (or --scheduler_type step, SwAV's schedule).
# python job_launcher.py --method eval_semisup --script_file scripts/eval_semisup_1perc.sh --num_gpus 8 \
#     --data_dir /path/to/imagenet -- --pretrained EXP/checkpoint.pth --checkpoint_key teacher
--labels_perc 1 \
--pretrained /path/to/checkpoint.pth \
--checkpoint_key teacher \
--arch resnet50 \
--hidden_mlp 2048 \
--load_hidden_mlp true \
--epochs 50 \
--batch_size 64 \
--lr 0.02 \
--lr_last_layer 5 \
--final_lr 0 \
--warmup_epochs 0 \
--wd 0 \
--scheduler_type cosine \
--mixup false \
--light_augment false \
--workers 10
