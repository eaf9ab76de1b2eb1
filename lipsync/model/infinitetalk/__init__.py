"""InfiniteTalk (MeiGen-AI/InfiniteTalk): Wan2.1-I2V-14B with audio cross-attention, whole frames in 4n+1 chunks."""
