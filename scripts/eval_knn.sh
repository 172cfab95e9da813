eval_knn.py \
# Weighted k-NN on ImageNet with DINO's eval_knn.py settings for ViT-S/16: all 1.28M training images vote
# (DINO's evaluation), teacher backbone, Resize 256 (bicubic) + CenterCrop 224, DINO's normalisation, k = 10, 20,
# 100, 200 (the paper reports 20), T = 0.07, 128 images per GPU. For the labels a semi-supervised run may use:
# `-- --train_subset labelled --labels_perc 1`.
# python job_launcher.py --method eval_knn --script_file scripts/eval_knn.sh --num_gpus 8 \
#     --data_dir /path/to/imagenet -- --pretrained EXP/checkpoint.pth
--train_subset all \
--pretrained /path/to/checkpoint.pth \
--checkpoint_key teacher \
--arch vit_small \
--patch_size 16 \
--val_resize 256 \
--val_crop 224 \
--val_interpolation bicubic \
--nb_knn 10 20 100 200 \
--temperature 0.07 \
--batch_size_per_gpu 128 \
--num_workers 10 \
--use_cuda true
