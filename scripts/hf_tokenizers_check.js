// Reference side of the tokenizer comparison (tests/e2e_tokenizer.sh): runs Hugging Face
// `tokenizers` (the Rust library's node binding, npm package "tokenizers") on a tokenizer.json.
//
//   node scripts/hf_tokenizers_check.js encode TOKENIZER.json FILE...
//       prints each file's ids, one line per file, space-separated (the format of
//       `moetron tokenize ids`); added/special tokens in the text are matched, as HF always does
//   node scripts/hf_tokenizers_check.js decode TOKENIZER.json IDS_FILE OUT_PREFIX
//       decodes each line of IDS_FILE (special tokens kept) into OUT_PREFIX<line number>
//
// The package is looked up in $HF_NODE_MODULES, else <repo>/.cache/node/node_modules (where
// scripts/setup.sh installs it).
'use strict';
const fs = require('fs');
const path = require('path');

const modules =
  process.env.HF_NODE_MODULES || path.join(__dirname, '..', '.cache', 'node', 'node_modules');
const { Tokenizer } = require(path.join(modules, 'tokenizers'));

async function main() {
  const [mode, tokPath, ...rest] = process.argv.slice(2);
  if (!mode || !tokPath) throw new Error('usage: hf_tokenizers_check.js encode|decode TOKENIZER ...');
  const tok = Tokenizer.fromFile(tokPath);
  if (mode === 'encode') {
    const lines = [];
    for (const f of rest) {
      const text = fs.readFileSync(f, 'utf8');
      const enc = await tok.encode(text, null, { addSpecialTokens: false });
      lines.push(enc.getIds().join(' '));
    }
    process.stdout.write(lines.map((l) => l + '\n').join(''));
  } else if (mode === 'decode') {
    const [idsFile, outPrefix] = rest;
    const lines = fs.readFileSync(idsFile, 'utf8').split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    for (let i = 0; i < lines.length; i++) {
      const ids = lines[i] === '' ? [] : lines[i].split(' ').map(Number);
      const text = await tok.decode(ids, false);
      fs.writeFileSync(outPrefix + i, text, 'utf8');
    }
  } else {
    throw new Error('unknown mode ' + mode);
  }
}

main().catch((e) => {
  process.stderr.write('hf_tokenizers_check: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
