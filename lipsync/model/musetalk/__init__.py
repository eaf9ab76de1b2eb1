"""MuseTalk (TMElyralab/MuseTalk, 1.5 and 1.0): one UNet pass per frame on 256² face crops."""
