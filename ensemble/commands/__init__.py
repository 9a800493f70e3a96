"""One module per `ens` command: each takes the parsed options, calls the library, returns the text
to print. Command modules import library layers, never each other; nothing imports them but `cli`."""
