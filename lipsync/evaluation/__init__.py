"""Quality metrics of lip-sync outputs: SyncNet LSE-C / LSE-D / offset, StableSyncNet, identity (CSIM) and the
unchanged region's PSNR/SSIM; ``lipsync eval`` runs them over files or a live server (docs/evaluation.md).

The sync scorers take the network weights a user supplies (never downloaded); everything here runs on CPU,
faster on a GPU.
"""
