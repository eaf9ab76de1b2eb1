from lipsync.cli import main

main()
