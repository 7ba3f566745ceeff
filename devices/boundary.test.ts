// Device models stay independent of any encoding: nothing under devices/ reaches proto/ (the wire
// schema and its generated code) or the protobuf runtime, directly or through what it imports. The
// endpoint translates (endpoint/describe.ts, endpoint/dma.ts).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { expect, describe as group, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Packages that are the encoding: protobuf's runtime and its 64-bit integers. */
const ENCODING_PACKAGES = ['protobufjs', 'long'];

const rel = (abs: string) => relative(ROOT, abs).split('\\').join('/');

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return tsFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** How the check sees files; a fake one tests the check itself. */
interface Files {
  read(abs: string): string;
  exists(abs: string): boolean;
}

const disk: Files = {
  read: (f) => readFileSync(f, 'utf8'),
  exists: (f) => existsSync(f) && statSync(f).isFile(),
};

/** Where a relative specifier lands: the .ts behind a .js, a directory's index.ts. */
function resolveRelative(files: Files, from: string, spec: string): string {
  const p = resolve(dirname(from), spec);
  return [p.replace(/\.js$/, '.ts'), p, `${p}.ts`, join(p, 'index.ts')].find((c) => files.exists(c)) ?? p;
}

/** Import chains from `file` to proto/ or an encoding package; [] when it stays clear. Follows
 *  relative imports into any directory (a test may import an endpoint backend: that must be clear
 *  too). Imports, re-exports, dynamic imports and requires all count. */
function violations(file: string, files: Files = disk): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  const visit = (abs: string, chain: string[]) => {
    if (seen.has(abs)) return;
    seen.add(abs);
    if (!abs.endsWith('.ts') || !files.exists(abs)) return; // plain JS outside proto/: not ours
    for (const { fileName: spec } of ts.preProcessFile(files.read(abs), true, true).importedFiles) {
      if (!spec.startsWith('.')) {
        const pkg = spec.split('/')[0];
        if (ENCODING_PACKAGES.includes(pkg))
          out.push(`${[...chain, `'${spec}'`].join(' -> ')} (the ${pkg} package)`);
        continue; // node: built-ins and other packages
      }
      const target = resolveRelative(files, abs, spec);
      const r = rel(target);
      if (r === 'proto' || r.startsWith('proto/')) out.push(`${[...chain, r].join(' -> ')} (proto/)`);
      else visit(target, [...chain, r]);
    }
  };
  visit(file, [rel(file)]);
  return out;
}

group('devices/ boundary', () => {
  it('no file under devices/ imports from proto/ or the protobuf runtime, directly or indirectly', () => {
    const files = tsFiles(join(ROOT, 'devices'));
    expect(files.length).toBeGreaterThan(20);
    const found = files.flatMap((f) => violations(f));
    expect(found, `devices/ must not depend on the encoding:\n${found.join('\n')}`).toEqual([]);
  });

  it('the check catches direct, re-exported, dynamic and indirect imports of proto/', () => {
    const fake: Record<string, string> = {
      'devices/a.ts': "import { u64 } from '../proto/wire.js';",
      'devices/pci/b.ts': "export * from '../../proto/gen/pcinet.js';",
      'devices/c.ts': "const w = await import('../proto/codec.js');",
      'devices/d.ts': "import type { X } from './pci/e.js';",
      'devices/pci/e.ts': "import Long from 'long';\nimport { f } from '../../lib/f.js';",
      'lib/f.ts': "import { pcinet } from '../proto/wire.js';",
      'devices/clean.ts': "import { crc32 } from 'node:zlib';\nimport { rd32 } from './pci/le.js';",
      'devices/pci/le.ts': '',
    };
    const files: Files = { read: (abs) => fake[rel(abs)], exists: (abs) => rel(abs) in fake };
    const check = (f: string) => violations(join(ROOT, f), files);
    expect(check('devices/a.ts')).toEqual(['devices/a.ts -> proto/wire.js (proto/)']);
    expect(check('devices/pci/b.ts')).toEqual(['devices/pci/b.ts -> proto/gen/pcinet.js (proto/)']);
    expect(check('devices/c.ts')).toEqual(['devices/c.ts -> proto/codec.js (proto/)']);
    expect(check('devices/d.ts')).toEqual([
      "devices/d.ts -> devices/pci/e.ts -> 'long' (the long package)",
      'devices/d.ts -> devices/pci/e.ts -> lib/f.ts -> proto/wire.js (proto/)',
    ]);
    expect(check('devices/clean.ts')).toEqual([]);
  });
});
