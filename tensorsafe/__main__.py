from tensorsafe.cli import main

main()
