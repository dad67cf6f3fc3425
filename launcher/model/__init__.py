"""The segmentation model workflow: training/tuning/hosting requests, SDK local mode, prediction tiles."""
