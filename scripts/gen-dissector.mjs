// Writes the schema block of the Wireshark dissector (packaging/wireshark/pcinet.lua) from
// proto/pcinet.proto, so the dissector knows every message and field the schema of record has.
// `--check`: exit 1 (saying so) if the file is not what this would write.
import { readFileSync, writeFileSync } from 'node:fs';
import protobuf from 'protobufjs';

const LUA = 'packaging/wireshark/pcinet.lua';
const BEGIN = '-- BEGIN SCHEMA (scripts/gen-dissector.mjs writes this block from proto/pcinet.proto)';
const END = '-- END SCHEMA';

const root = new protobuf.Root().loadSync('proto/pcinet.proto', { keepCase: true });
const ns = root.lookup('pcinet');
const types = ns.nestedArray.filter((t) => t instanceof protobuf.Type);
const enums = ns.nestedArray.filter((t) => t instanceof protobuf.Enum);

const snake = (s) => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
const q = (s) => JSON.stringify(s);

const lines = [BEGIN, 'local ENUMS = {'];
for (const e of enums) {
  const values = Object.entries(e.values).map(([name, v]) => `[${v}] = ${q(name)}`);
  lines.push(`  ${e.name} = { ${values.join(', ')} },`);
}
lines.push(
  '}',
  '-- message type -> field number -> { name, kind, type (enum or message) }',
  'local MESSAGES = {',
);
for (const t of types) {
  lines.push(`  ${t.name} = {`);
  for (const f of t.fieldsArray) {
    f.resolve();
    let kind = f.type;
    let ref = '';
    if (f.resolvedType instanceof protobuf.Enum) {
      kind = 'enum';
      ref = f.resolvedType.name;
    } else if (f.resolvedType instanceof protobuf.Type) {
      kind = 'message';
      ref = f.resolvedType.name;
    }
    lines.push(`    [${f.id}] = { ${q(f.name)}, ${q(kind)}${ref ? `, ${q(ref)}` : ''} },`);
  }
  lines.push('  },');
}
lines.push('}', '-- message type -> its field name prefix in display filters (pcinet.<prefix>.<field>)');
lines.push(`local PREFIX = { ${types.map((t) => `${t.name} = ${q(snake(t.name))}`).join(', ')} }`, END);
const block = lines.join('\n');

const text = readFileSync(LUA, 'utf8');
const from = text.indexOf(BEGIN);
const to = text.indexOf(END);
if (from < 0 || to < from) {
  console.error(`${LUA}: no schema block (${BEGIN} … ${END})`);
  process.exit(1);
}
const next = text.slice(0, from) + block + text.slice(to + END.length);
if (process.argv.includes('--check')) {
  if (next !== text) {
    console.error(`${LUA} is out of date with proto/pcinet.proto: run npm run gen`);
    process.exit(1);
  }
} else if (next !== text) {
  writeFileSync(LUA, next);
}
