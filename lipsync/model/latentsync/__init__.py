"""LatentSync (bytedance/LatentSync, 1.5 and 1.6): DDIM over 16-frame segments with audio cross-attention."""
