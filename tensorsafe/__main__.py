from tensorsafe.entry import main

main()
