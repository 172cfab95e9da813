eval_knn.py \
# Weighted 20-NN on the Fashion-MNIST demo's checkpoint (bash scripts/demo_fmnist.sh) on the CPU: its 1% labels
# (600 images) vote, the 10,000 val images are classified; images at their 28 px, the fmnist recipes' mean/std.
# `-- --train_subset all` lets all 60,000 training images vote (DINO's setting).
# python job_launcher.py --method eval_knn --script_file scripts/eval_knn_fmnist.sh --num_gpus 0 \
#     --data_dir data/fashion-mnist -- --pretrained EXP/checkpoint.pth
--data_path data/fashion-mnist \
--train_subset labelled \
--labels_perc 1 \
--pretrained /path/to/checkpoint.pth \
--checkpoint_key student \
--arch cnn6w2 \
--val_resize 0 \
--val_crop 0 \
--mean 0.286 0.286 0.286 \
--std 0.353 0.353 0.353 \
--nb_knn 20 \
--temperature 0.07 \
--batch_size_per_gpu 1000 \
--num_workers 1 \
--log_freq 10
