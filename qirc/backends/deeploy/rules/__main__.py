"""python -m qirc.backends.deeploy.rules [docs/targets.md]: print the rule lists, or rewrite them in that file."""
import sys

from . import describe_rules, update_doc

if len(sys.argv) > 1:
    with open(sys.argv[1], encoding="utf-8") as f:
        text = update_doc(f.read())
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write(text)
else:
    sys.stdout.write(describe_rules())
