from tensorsafe.cli.entry import main

main()
