eval_linear.py \
# Linear classifier on frozen ImageNet features with the release's eval_linear.py defaults: 100 epochs, batch
# 32 per GPU on 8 GPUs, SGD momentum 0.9 (no Nesterov), lr 0.3 on a per-epoch cosine to 0, weight decay 1e-6,
# global average pooling, no BatchNorm.
# python job_launcher.py --method eval_linear --script_file scripts/eval_linear.sh --num_gpus 8 \
#     --data_dir /path/to/imagenet -- --pretrained EXP/checkpoint.pth --checkpoint_key teacher
--pretrained /path/to/checkpoint.pth \
--checkpoint_key teacher \
--arch resnet50 \
--global_pooling true \
--use_bn false \
--epochs 100 \
--batch_size 32 \
--lr 0.3 \
--wd 1e-6 \
--nesterov false \
--scheduler_type cosine \
--final_lr 0 \
--workers 10
