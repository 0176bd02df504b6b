from delib.testing.server import main

main()
