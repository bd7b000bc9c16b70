"""EXAMPLES of the man pages, by page (``""`` is lms.1, else the command group).

Every ``lms ...`` invocation here is parsed against the app by a test, so an example cannot
drift from the options it shows.
"""

from __future__ import annotations

Example = tuple[str, str]  # (what it does, the shell line)

EXAMPLES: dict[str, list[Example]] = {
    "": [
        ("Show this help and whether the daemon and the server run:", "lms"),
        (
            "Start the HTTP API on 127.0.0.1:1234 (the daemon starts first if needed):",
            "lms server start",
        ),
        (
            "Load the bundled model with a larger context, then ask it once:",
            "lms load google/gemma-3-270m --context-length 8192\n"
            'lms chat google/gemma-3-270m -p "The capital of France is"',
        ),
        (
            "Bring a GGUF file into the models folder without copying it:",
            "lms import ~/Downloads/model.Q4_K_M.gguf --symlink",
        ),
        (
            "Download a model, checking its size and checksum:",
            "lms get https://example.com/models/model.gguf --sha256 "
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("Loaded instances as JSON, for a script:", "lms ps --json"),
        ("Unload every instance:", "lms unload --all"),
        (
            "In CI: start the server, mint a scoped token, call the API, revoke it, stop:",
            "lms server start\n"
            "export LM_API_TOKEN=$(lms token create ci --perm inference --expires 1h --quiet)\n"
            'curl -s http://127.0.0.1:1234/v1/models -H "Authorization: Bearer $LM_API_TOKEN"\n'
            "lms token rm ci --yes\n"
            "lms daemon down",
        ),
    ],
    "daemon": [
        ("Start the daemon (nothing happens if it runs):", "lms daemon up"),
        ("Its pid, version, socket and uptime, as JSON:", "lms daemon status --json"),
        ("Stop it, with every model and the server:", "lms daemon down"),
    ],
    "server": [
        ("Start the API on another port:", "lms server start --port 8080"),
        (
            "Serve the network over HTTPS (turn authentication on first):",
            "lms auth require on\n"
            "lms server start --bind 0.0.0.0 --tls-cert cert.pem --tls-key key.pem",
        ),
        (
            "Run daemon and server in the foreground, for a container or a service manager:",
            "lms server start --foreground",
        ),
        ("Is it running, and where?", "lms server status --json"),
        ("Stop the API; the daemon and its loaded models stay:", "lms server stop"),
    ],
    "token": [
        (
            "A token for CI: inference only, on google models, for 30 days, 60 requests a minute:",
            "lms token create ci --perm inference --model 'google/*' --expires 30d --rpm 60",
        ),
        (
            "Mint a token straight into a variable (only the token is printed):",
            "export LM_API_TOKEN=$(lms token create my-editor --quiet)",
        ),
        ("Every token, its permissions and usage, as JSON:", "lms token list --json"),
        (
            "Allow it to load models too, and lift its rate limit:",
            "lms token edit ci --add-perm models --no-rpm",
        ),
        (
            "A new secret; the old one keeps working for an hour:",
            "lms token rotate ci --grace 1h --quiet",
        ),
        ("Revoke it without a question (as a script must):", "lms token rm ci --yes"),
    ],
    "auth": [
        ("Require a token on every API request:", "lms auth require on"),
        ("What the daemon enforces, for a script:", "lms auth status --json"),
        ("Token changes and refused requests of the last day:", "lms auth audit --since 1d"),
    ],
    "config": [
        ("Every setting, its value and where it comes from:", "lms config list"),
        (
            "Change the port (it applies at the next server start):",
            "lms config set server.port 8080",
        ),
        (
            "Allow two browser origins, and turn CORS on:",
            "lms config set server.cors_origins http://localhost:3000,http://localhost:5173\n"
            "lms config set server.cors on",
        ),
        ("Back to the default:", "lms config unset server.port"),
        ("One value, as JSON:", "lms config get models.ttl --json"),
    ],
    "log": [
        ("Follow requests and model input/output:", "lms log stream"),
        ("Requests only, one JSON event per line:", "lms log stream --source server --json"),
    ],
    "mcp": [
        ("The servers of mcp.json (secrets redacted; no daemon needed):", "lms mcp list"),
        ("Each server's tools (starts the daemon and the servers):", "lms mcp list --tools"),
    ],
    "remote": [
        (
            "Serve the models of a llama-server on another machine as gpu/<model>:",
            "lms remote add gpu http://10.0.0.5:8080",
        ),
        (
            "A vLLM server behind an API key (read from stdin, kept in a 0600 file):",
            "printenv VLLM_API_KEY | lms remote add vllm https://vllm.example:8000 --key-stdin",
        ),
        (
            "Two replicas of one server, serving only its llama models:",
            "lms remote add gpu http://10.0.0.5:8080 http://10.0.0.6:8080 -m 'llama-*' --replace",
        ),
        ("What each remote serves now, and its replicas' health:", "lms remote list"),
        ("Stop serving it:", "lms remote rm gpu"),
    ],
}
