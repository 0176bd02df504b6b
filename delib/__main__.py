from delib.cli import main

main()
