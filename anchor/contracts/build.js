// build.js compiles Anchor.sol with solc-js (pinned, see SOLC_VERSION) and
// writes Anchor.abi, Anchor.bin and Anchor.metadata.json.
//
//   node anchor/contracts/build.js [OUTDIR]
//
// OUTDIR defaults to this directory. solc is loaded from $SOLC_MODULE, or
// else from build/solc/node_modules/solc at the repository root (make
// contracts installs it there). The output is deterministic: the tests
// recompile into a temporary OUTDIR and compare byte for byte.
'use strict';

const fs = require('fs');
const path = require('path');

const SOLC_VERSION = '0.8.37';
const here = __dirname;
const outDir = path.resolve(process.argv[2] || here);
const solcPath = process.env.SOLC_MODULE ||
  path.join(here, '..', '..', 'build', 'solc', 'node_modules', 'solc');

const solc = require(solcPath);
if (!solc.version().startsWith(SOLC_VERSION + '+')) {
  console.error(`build.js: want solc ${SOLC_VERSION}, have ${solc.version()}`);
  process.exit(1);
}

const input = {
  language: 'Solidity',
  sources: {
    'Anchor.sol': { content: fs.readFileSync(path.join(here, 'Anchor.sol'), 'utf8') },
  },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'shanghai',
    outputSelection: {
      'Anchor.sol': { Anchor: ['abi', 'evm.bytecode.object', 'metadata'] },
    },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

const c = output.contracts['Anchor.sol'].Anchor;
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, 'Anchor.abi'), JSON.stringify(c.abi, null, 2) + '\n');
fs.writeFileSync(path.join(outDir, 'Anchor.bin'), c.evm.bytecode.object);
// The metadata is written as solc emitted it: its hash is in the bytecode.
fs.writeFileSync(path.join(outDir, 'Anchor.metadata.json'), c.metadata);
