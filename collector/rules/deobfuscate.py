"""A command line as a shell would run it, with the usual disguises undone, so argv rules see through them.

Obfuscators (Bashfuscator, Invoke-Obfuscation's Linux cousins, hand-made one-liners) keep the behaviour and change
the spelling: ``c''url``, ``c\\u\\r\\l``, ``curl${IFS}-s``, ``{curl,-s,URL}``, ``$'\\x63\\x75\\x72\\x6c'``,
``a=cu;b=rl;$a$b``, ``$(printf '\\x63url')``, ``/???/b??h``, ``echo B64 | base64 -d``, ``echo 'hs|...' | rev``,
``printf '\\143...'``, ``${PATH:0:1}bin${PATH:0:1}sh``, ``tr 'a-zA-Z' 'n-za-mN-ZA-M'`` (rot13), ``'o'+'s'`` in inline
code. A rule written for ``curl ... | sh`` matches none of them. Inline code's own file writes, copies and
environment settings are read as the shell lines that would do the same (``code_as_shell``:
``open(P,'a').write(X)`` as ``echo 'X' >> P``), so the rules about start-up files, keys, cron and preloads see them
too. ``readable`` returns the line with each disguise undone (or "" when nothing was disguised); the argv keys
search it after the line itself (context.EventView.argv_texts), so every argv rule sees through every disguise
without knowing of it. Pure and
bounded: no shell, no filesystem, no network; decoded payloads are kept only when they are printable text.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import fnmatch
import re

MAX_TEXT = 16_384                 # longer lines are read as they are (the argv rules' own bound is larger)
MAX_VARIABLES = 32

ANSI_C = re.compile(r"\$'((?:[^'\\]|\\.)*)'")
EMPTY_QUOTES = re.compile(r"(?<=\S)(?:''|\"\")+|(?:''|\"\")+(?=\S)")
ESCAPED_CHAR = re.compile(r"\\([A-Za-z0-9_./:-])")
IFS = re.compile(r"\$\{IFS[^}]{0,8}\}|\$IFS(?:\$\d|\b)")
SLASH_SLICE = re.compile(r"\$\{(?:PATH|HOME|PWD|OLDPWD|SHELL|TMPDIR):0:1\}")   # always "/": Bashfuscator's slash
QUOTED_CONCAT = re.compile(r"""(['"])([^'"\\]{0,200})\1\s*\+\s*(['"])([^'"\\]{0,200})\3""")   # 'o'+'s' in code
BRACE_LIST = re.compile(r"(^|[\s;&|(`])\{([^{}\s,]+(?:,[^{}\s,]*)+)\}")
ASSIGNMENT = re.compile(r"(?:^|[\s;&|(`])([A-Za-z_]\w{0,30})=('[^']{0,200}'|\"[^\"$`]{0,200}\"|[^\s;&|()`'\"$]{1,200})"
                        r"(?=\s*(?:;|&&|\|\||\n|$))")
GLOB_PATH = re.compile(r"(?<![\w/])(/[\w.?*\[\]-]+)+")
QUOTED_OR_WORD = r"""(?:'([^']{4,4000})'|"([^"]{4,4000})"|([^\s'"|;&<>]{4,4000}))"""
ROT13 = r"tr\s+['\"]?\[?(?:a-zA-Z|A-Za-z|a-z)\]?['\"]?\s+['\"]?\[?(?:n-za-mN-ZA-M|N-ZA-Mn-za-m|n-za-m)\]?['\"]?"
DECODER = (r"(base64\s+(?:-d|--decode|-D)|base32\s+(?:-d|--decode)|rev|xxd\s+-r\s+-p|xxd\s+-p\s+-r|" + ROT13 + r")"
           r"(?![\w-])")
ECHOED_TO = re.compile(r"(?:echo|printf)\s+(?:-[neE]+\s+)?(?:['\"]%s(?:\\n)?['\"]\s+)?" + QUOTED_OR_WORD + r"\s*\|\s*"
                       + DECODER)
HERE_STRING_TO = re.compile(DECODER + r"\s*<<<\s*" + QUOTED_OR_WORD)
PRINTF_ESCAPES = re.compile(r"(?:printf|echo\s+-[a-zA-Z]*e[a-zA-Z]*)\s+(['\"])((?:\\(?:x[0-9a-fA-F]{1,2}|[0-7]{1,3})"
                            r"|[^'\"\\]){3,4000})\1")
PRINTED_SUBSTITUTION = re.compile(r"\$\(\s*(?:printf|echo(?:\s+-[neE]+)?)\s+(['\"]?)([^'\"()`%$]{1,400})\1\s*\)"
                                  r"|`\s*(?:printf|echo(?:\s+-[neE]+)?)\s+(['\"]?)([^'\"()`%$]{1,400})\3\s*`")
CHAR_CODES = re.compile(r"\[\s*(\d{2,3}(?:\s*,\s*\d{2,3}){3,2000})\s*\]")
PACK_HEX = re.compile(r"pack\s*\(?\s*['\"]H\*['\"]\s*,\s*['\"]([0-9a-fA-F]{8,8000})['\"]")

# What inline code does to files and to its environment, read as the shell line that would do the same (so the rules
# about start-up files, keys, cron, preloads and copies see python -c / node -e / ruby -e / perl -e doing it too).
_Q = r"""(['"`])"""
PY_WRITE = re.compile(r"open\(\s*" + _Q + r"(?P<path>[^'\"`]{1,300})\1\s*,\s*(['\"])(?P<mode>[wax])b?\+?\3[^)]{0,40}\)"
                      r"(?:\s*as\s+\w+\s*:\s*\w+)?\s*\.write\(\s*" + r"(['\"])(?P<body>[^'\"]{0,2000})\5")
PATH_WRITE = re.compile(r"Path\(\s*" + _Q + r"(?P<path>[^'\"`]{1,300})\1\s*\)(?:\.expanduser\(\))?\s*\.write_text\(\s*"
                        r"(['\"])(?P<body>[^'\"]{0,2000})\3")
NODE_WRITE = re.compile(r"\b(?P<fn>appendFile|writeFile)(?:Sync)?\(\s*(?P<path>[^,]{1,300}?)\s*,\s*" + _Q
                        + r"(?P<body>[^'\"`]{0,2000})\3")
RUBY_WRITE = re.compile(r"File\.(?:write|binwrite)\(\s*" + _Q + r"(?P<path>[^'\"`]{1,300})\1\s*,\s*(['\"])"
                        r"(?P<body>[^'\"]{0,2000})\3")
PERL_WRITE = re.compile(r"open\(?\s*\w+\s*,\s*(['\"])(?P<mode>>>?)\s*(?P<path>[^'\"]{1,300})\1\s*\)?\s*;"
                        r"\s*print\s+\w+\s+(['\"])(?P<body>[^'\"]{0,2000})\4")
PY_COPY = re.compile(r"shutil\.(?P<fn>copytree|copy2?|copyfile|move)\(\s*" + _Q
                     + r"(?P<src>[^'\"`]{1,300})\2\s*,\s*(['\"])(?P<dst>[^'\"]{1,300})\4")
ENV_SET = re.compile(r"(?:os\.environ|process\.env|ENV)\s*"
                     r"(?:\[\s*(['\"])(?P<name>\w{1,64})\1\s*\]|\.(?P<attr>\w{1,64}))\s*=\s*"
                     r"(['\"])(?P<value>[^'\"]{0,500})\4")
HOME_EXPR = re.compile(r"process\.env\.HOME|os\.homedir\(\)|os\.path\.expanduser\(\s*['\"]~['\"]\s*\)|Dir\.home"
                       r"|ENV\[['\"]HOME['\"]\]")


def _shell_path(expr: str) -> str:
    """A path written as a code expression (``process.env.HOME+'/.bashrc'``) as the shell would write it."""
    expr = HOME_EXPR.sub("$HOME", expr)
    return re.sub(r"[\s'\"`+]|path\.join\(|\)", "", expr.replace(",", "/")).replace("//", "/")


def code_as_shell(text: str) -> list[str]:
    """Inline code's file writes, copies and environment settings as shell lines (``echo 'X' >> PATH``,
    ``cp -r SRC DST``, ``export NAME=VALUE``)."""
    out = []
    for m in PY_WRITE.finditer(text):
        out.append(f"echo '{m.group('body')}' {'>>' if m.group('mode') == 'a' else '>'} {m.group('path')}")
    for rx in (PATH_WRITE, RUBY_WRITE):
        for m in rx.finditer(text):
            out.append(f"echo '{m.group('body')}' > {m.group('path')}")
    for m in NODE_WRITE.finditer(text):
        out.append(f"echo '{m.group('body')}' {'>>' if m.group('fn') == 'appendFile' else '>'} "
                   f"{_shell_path(m.group('path'))}")
    for m in PERL_WRITE.finditer(text):
        out.append(f"echo '{m.group('body')}' {m.group('mode')} {m.group('path')}")
    for m in PY_COPY.finditer(text):
        verb = "mv" if m.group("fn") == "move" else "cp -r" if m.group("fn") == "copytree" else "cp"
        out.append(f"{verb} {m.group('src')} {m.group('dst')}")
    for m in ENV_SET.finditer(text):
        out.append(f"export {m.group('name') or m.group('attr')}={m.group('value')}")
    return out


# what a glob in a command line usually stands for: shells, downloaders, interpreters, network tools, secrets
GLOB_TARGETS = tuple(f"{d}/{n}" for d in ("/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin") for n in (
    "sh", "bash", "dash", "zsh", "ksh", "busybox", "curl", "wget", "nc", "ncat", "netcat", "socat", "python",
    "python3", "perl", "ruby", "php", "node", "ssh", "openssl", "base64", "telnet", "cat")) + (
    "/etc/shadow", "/etc/passwd", "/etc/sudoers", "/etc/gshadow", "/dev/tcp", "/dev/udp", "/root/.ssh/id_rsa",
    "/root/.ssh/authorized_keys", "/proc/self/environ")


def readable(text: str, variables: dict[str, str] | None = None) -> str:
    """The line with its disguises undone, or "" when it has none (or is too long to read here). ``variables``: those
    the lines around it (a script's: ``assignments``) set, which it may use."""
    if len(text) > MAX_TEXT or not _may_disguise(text):
        return ""
    out = PRINTED_SUBSTITUTION.sub(lambda m: _unescape(m.group(2) or m.group(4) or ""), text)
    out = ANSI_C.sub(lambda m: _unescape(m.group(1)), out)
    out = EMPTY_QUOTES.sub("", out)
    out = IFS.sub(" ", out)
    out = SLASH_SLICE.sub("/", out)
    for _ in range(8):                                   # 'sys'+'tem' and longer chains, a few joins deep
        joined = QUOTED_CONCAT.sub(lambda m: m.group(1) + m.group(2) + m.group(4) + m.group(1), out)
        if joined == out:
            break
        out = joined
    out = ESCAPED_CHAR.sub(r"\1", out)
    out = BRACE_LIST.sub(lambda m: m.group(1) + m.group(2).replace(",", " "), out)
    out = _substitute_variables(out, variables or {})
    out = GLOB_PATH.sub(_resolve_glob, out)
    decoded = [d for d in (*_decoded_payloads(text), *code_as_shell(text)) if d]
    if decoded:
        out = " ; ".join([out, *decoded])
    return "" if out == text else out


TRIGGERS = re.compile(r"\$'|''|\"\"|\\[A-Za-z]|IFS|open\(|write|shutil\.|environ|process\.env|ENV|"
                      r"\{[^}\s]*,|\$\{?[A-Za-z_]|[?*]|base64|base32|rev\b|xxd|printf|"
                      r"['\"]\s*\+\s*['\"]|\btr\s|"
                      r"echo\s+-[a-zA-Z]*e|chr|pack|(\$\(|`)\s*echo\s")


def _may_disguise(text: str) -> bool:
    return TRIGGERS.search(text) is not None


def _unescape(body: str) -> str:
    """A $'...' string's value (bash's ANSI-C quoting)."""
    def one(m: re.Match) -> str:
        s = m.group(0)
        if s[1] == "x":
            return chr(int(s[2:], 16))
        if s[1] in "uU":
            return chr(min(int(s[2:], 16), 0x10FFFF))
        if s[1].isdigit():
            return chr(int(s[1:], 8) & 0xFF)
        return {"n": "\n", "t": "\t", "r": "\r", "e": "\x1b", "a": "\a", "\\": "\\", "'": "'", '"': '"'}.get(s[1], s[1])
    return re.sub(r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|.)", one, body)


def assignments(text: str, known: dict[str, str] | None = None) -> dict[str, str]:
    """The simple assignments in a text (``name=value``, at most MAX_VARIABLES in all), after those ``known``."""
    values = dict(known or {})
    for m in ASSIGNMENT.finditer(text[:MAX_TEXT]):
        if len(values) >= MAX_VARIABLES:
            break
        value = m.group(2)
        values[m.group(1)] = value[1:-1] if value[:1] in "'\"" else value
    return values


def _substitute_variables(text: str, known: dict[str, str]) -> str:
    """``a=cu;b=rl;$a$b`` read as ``curl``: each simple assignment's value put where the variable is used."""
    if "$" not in text:
        return text
    values = assignments(text, known)
    if not values:
        return text
    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)",
                  lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _resolve_glob(m: re.Match) -> str:
    path = m.group(0)
    if "?" not in path and "*" not in path and "[" not in path:
        return path
    hits = [t for t in GLOB_TARGETS if fnmatch.fnmatchcase(t, path)]
    return hits[0] if hits else path


def _decoded_payloads(text: str) -> list[str]:
    """What a line decodes before it runs it: base64/base32 and hex blobs echoed into a decoder, strings reversed
    with rev, printf/echo -e escapes, chr() code lists and Perl's pack("H*")."""
    out = []
    for m in ECHOED_TO.finditer(text):
        out.append(_decode(m.group(4), m.group(1) or m.group(2) or m.group(3)))
    for m in HERE_STRING_TO.finditer(text):
        out.append(_decode(m.group(1), m.group(2) or m.group(3) or m.group(4)))
    for m in PRINTF_ESCAPES.finditer(text):
        out.append(_printable(_unescape(m.group(2)).encode("latin-1", "replace")))
    for m in CHAR_CODES.finditer(text):
        codes = [int(c) for c in m.group(1).split(",")]
        if all(9 <= c < 127 for c in codes):
            out.append("".join(map(chr, codes)))
    for m in PACK_HEX.finditer(text):
        out.append(_decode("xxd -r -p", m.group(1)))
    return out


def _decode(how: str, data: str) -> str:
    data = data.strip()
    try:
        if how.startswith("base64"):
            return _printable(base64.b64decode(data + "=" * (-len(data) % 4), validate=False))
        if how.startswith("base32"):
            return _printable(base64.b32decode(data + "=" * (-len(data) % 8)))
        if how.startswith("xxd"):
            return _printable(binascii.unhexlify(re.sub(r"\s", "", data)))
    except (binascii.Error, ValueError):
        return ""
    if how.startswith("tr"):
        return codecs.encode(data, "rot13")
    return data[::-1]                                   # rev


def _printable(raw: bytes) -> str:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return s if s and all(c.isprintable() or c in "\n\t\r" for c in s) else ""
