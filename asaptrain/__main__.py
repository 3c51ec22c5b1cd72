from asaptrain.cli import main

main()
