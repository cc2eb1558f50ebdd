"""Where transactions come from: the blockchain.com websocket and REST API, replays, synthetic traffic."""
