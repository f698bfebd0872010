from halo_rlm.cli import main

main()
