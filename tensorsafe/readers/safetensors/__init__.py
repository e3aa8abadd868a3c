"""The one safetensors header reader: format constants, the 8-byte length and header text
(:mod:`.layout`), the parse in the reference's order (:mod:`.parse`) and the format rules
ST-F01..F18 (:mod:`.offsets`). Everything that reads a safetensors header reads it here."""
