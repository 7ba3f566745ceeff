import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { rd64 } from '../devices/pci/le.js';
import {
  ABI_VERSION,
  AbiError,
  ATTACH_SIZE,
  CONNECT_SIZE,
  connectRecord,
  dmaReadRecord,
  dmaWriteRecord,
  emptyRecord,
  getU64,
  interruptRecord,
  type KernelRecord,
  LINK_F_SEAL,
  LINK_HELLO_SIZE,
  LINK_KEY,
  LINK_MAGIC,
  LINK_TOKEN,
  MAX_DATA,
  MAX_PUSH_RULES,
  mmioReadCplRecord,
  PUSH_F_INDIRECT,
  PUSH_KIND,
  PUSH_MAX_BYTES,
  PUSH_RULE_SIZE,
  parseRecords,
  pushRuleRecord,
  putU64,
  R,
  rangeRecord,
  SEAL_MAX,
  SEAL_TAG,
  shadowRecord,
  VIRTQ_DONE_SIZE,
  VQ_F,
  virtqDoneRecord,
  W,
  writesAppliedRecord,
} from './kernel-abi.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const flat = (s: string) => s.replace(/\s+/g, '');
/** Records with their data as hex (parseRecords returns Buffer slices). */
const plain = (recs: KernelRecord[]) => recs.map((r) => ('data' in r ? { ...r, data: toHex(r.data) } : r));

describe('64-bit fields without bigint arithmetic', () => {
  it('reads and writes u64s on raw bytes, below 2^53 and above', () => {
    const b = Buffer.from(hex('efcdab8967452301 ffffffffffff1f00 0000000000002000 ffffffffffffffff'));
    expect(getU64(b, 0)).toBe(0x0123_4567_89ab_cdefn);
    expect(getU64(b, 8)).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    expect(getU64(b, 16)).toBe(1n << 53n);
    expect(getU64(b, 24)).toBe((1n << 64n) - 1n);
    const out = Buffer.alloc(32);
    putU64(out, 0, 0x0123_4567_89ab_cdefn);
    putU64(out, 8, BigInt(Number.MAX_SAFE_INTEGER));
    putU64(out, 16, 1n << 53n);
    putU64(out, 24, (1n << 64n) - 1n);
    expect(out).toEqual(b);
  });

  it('agrees with Node and devices/pci/le.ts on every u64, and refuses what Node refuses', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (v) => {
        const b = Buffer.alloc(8);
        putU64(b, 0, v);
        const node = Buffer.alloc(8);
        node.writeBigUInt64LE(v);
        expect(b).toEqual(node);
        expect(getU64(b, 0)).toBe(v);
        expect(rd64(b, 0)).toBe(v);
      }),
    );
    expect(() => putU64(Buffer.alloc(8), 0, -1n)).toThrow(RangeError);
    expect(() => putU64(Buffer.alloc(8), 0, 1n << 64n)).toThrow(RangeError);
  });
});

describe('push records on raw bytes', () => {
  it('encodes W_PUSH_RULE for an NVMe I/O queue exactly', () => {
    const b = pushRuleRecord({
      id: 3,
      kind: PUSH_KIND.NVME_SQ,
      bar: 0,
      entries: 1024,
      offset: 0x1008n,
      ring: 0x1_2345_6000n,
      avail: 0n,
      dataMax: 0x20000,
      lbaShift: 9,
      flags: 0,
    });
    expect(toHex(b)).toBe(
      flat(
        '0d00 0000 48000000' + // type 13, flags 0, len 72
          '03000000 01000000 00000000 00040000' + // id, kind, bar, entries
          '0810000000000000' + // offset
          '0060452301000000' + // ring
          '0000000000000000' + // avail
          '00000200 09000000 00000000 00000000' + // data_max, lba_shift, flags, reserved
          '0000000000000000', // shadow
      ),
    );
  });

  it('encodes W_PUSH_RULE for a virtqueue with indirect tables', () => {
    const b = pushRuleRecord({
      id: 127,
      kind: PUSH_KIND.VIRTQ,
      bar: 4,
      entries: 256,
      offset: 0x3004n,
      ring: 0xffff_f000n,
      avail: 0xffff_e000n,
      dataMax: 65536,
      lbaShift: 0,
      flags: PUSH_F_INDIRECT,
    });
    expect(b.length).toBe(PUSH_RULE_SIZE);
    expect(toHex(b.subarray(8, 24))).toBe('7f000000' + '02000000' + '04000000' + '00010000');
    expect(b.readBigUInt64LE(32)).toBe(0xffff_f000n);
    expect(b.readBigUInt64LE(40)).toBe(0xffff_e000n);
    expect(toHex(b.subarray(48))).toBe(
      '00000100' + '00000000' + '01000000' + '00000000' + '0000000000000000',
    );
  });

  it('decodes R_PUSH (padded), R_PUSH_DROP and R_PUSH_RULE_SET from one read', () => {
    const recs = parseRecords(
      hex(
        // R_PUSH: len 32, size 5, rule 2, iova 0x10000040, data + 3 bytes of padding
        '8700 0000 20000000 05000000 02000000 4000001000000000 0102030405 000000' +
          // R_PUSH_DROP: len 24, iova 0x10000000, length 0x1000
          '8800 0000 18000000 0000001000000000 0010000000000000' +
          // R_PUSH_RULE_SET: len 16, id 2
          '8900 0000 10000000 02000000 00000000',
      ),
    );
    expect(plain(recs)).toEqual([
      { type: 'push', rule: 2, iova: 0x1000_0040n, data: '0102030405' },
      { type: 'push-drop', iova: 0x1000_0000n, length: 0x1000n },
      { type: 'push-rule-set', id: 2 },
    ]);
  });

  it('decodes a full 64 KiB R_PUSH', () => {
    const b = Buffer.alloc(24 + MAX_DATA, 0xab);
    b.writeUInt16LE(R.PUSH, 0);
    b.writeUInt16LE(0, 2);
    b.writeUInt32LE(b.length, 4);
    b.writeUInt32LE(MAX_DATA, 8);
    b.writeUInt32LE(0, 12);
    b.writeBigUInt64LE(0xfff0_0000n, 16);
    const [r] = parseRecords(b);
    expect(r).toMatchObject({ type: 'push', rule: 0, iova: 0xfff0_0000n });
    expect((r as { data: Uint8Array }).data.length).toBe(MAX_DATA);
  });

  it.each([
    ['R_PUSH whose size runs past its length', '8700 0000 18000000 01000000 00000000 0000000000000000'],
    ['R_PUSH shorter than its header', '8700 0000 10000000 00000000 00000000'],
    ['R_PUSH_DROP without its length', '8800 0000 10000000 0000001000000000'],
    ['R_PUSH_RULE_SET of 8 bytes', '8900 0000 08000000'],
  ])('refuses %s', (_, bytes) => {
    expect(() => parseRecords(hex(bytes))).toThrow(AbiError);
  });
});

/*
 * The record layouts against the C header itself: a small program prints sizeof, offsetof and
 * the numbers from kernel/uapi/pcinet.h, and the builders and parser here must agree. Needs a C
 * compiler and the Linux UAPI headers (linux/types.h); skipped without them.
 */
const cc = (() => {
  try {
    execFileSync('cc', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!cc)('record layouts against kernel/uapi/pcinet.h', () => {
  const fields: [string, string][] = [
    ...['id', 'flags', 'vector', 'old_used', 'new_used', 'kick'].map(
      (f) => ['w_virtq_done', f] as [string, string],
    ),
    ['w_push_rule', 'id'],
    ['w_push_rule', 'kind'],
    ['w_push_rule', 'bar'],
    ['w_push_rule', 'entries'],
    ['w_push_rule', 'offset'],
    ['w_push_rule', 'ring'],
    ['w_push_rule', 'avail'],
    ['w_push_rule', 'data_max'],
    ['w_push_rule', 'lba_shift'],
    ['w_push_rule', 'flags'],
    ['w_push_rule', 'reserved'],
    ['w_push_rule', 'shadow'],
    ['r_push', 'size'],
    ['r_push', 'rule'],
    ['r_push', 'iova'],
    ['r_push', 'data'],
    ['r_push_drop', 'iova'],
    ['r_push_drop', 'length'],
    ['r_push_rule_set', 'id'],
    ['r_push_rule_set', 'reserved'],
    ['w_connect', 'family'],
    ['w_connect', 'port'],
    ['w_connect', 'timeout_ms'],
    ['w_connect', 'addr'],
    ['w_connect', 'token'],
    ['w_connect', 'flags'],
    ['w_connect', 'key'],
    ['link_hello', 'magic'],
    ['link_hello', 'token'],
    ['link_hello', 'abi_version'],
    ['r_link_closed', 'error'],
  ];
  const structs = [
    'w_attach',
    'w_range',
    'w_shadow',
    'w_writes_applied',
    'w_mmio_read_cpl',
    'w_dma_read',
    'w_dma_write',
    'w_interrupt',
    'w_push_rule',
    'r_attached',
    'r_mmio_write',
    'r_mmio_read',
    'r_config_write',
    'r_dma_read_cpl',
    'r_push',
    'r_push_drop',
    'r_push_rule_set',
    'w_connect',
    'link_hello',
    'r_link_closed',
    'w_virtq_done',
  ];
  const numbers = [
    'PCINET_W_PUSH_RULE',
    'PCINET_R_PUSH',
    'PCINET_R_PUSH_DROP',
    'PCINET_R_PUSH_RULE_SET',
    'PCINET_PUSH_NONE',
    'PCINET_PUSH_NVME_SQ',
    'PCINET_PUSH_VIRTQ',
    'PCINET_PUSH_F_INDIRECT',
    'PCINET_MAX_PUSH_RULES',
    'PCINET_PUSH_MAX_BYTES',
    'PCINET_MAX_DATA',
    'PCINET_W_CONNECT',
    'PCINET_R_LINK_CLOSED',
    'PCINET_LINK_TOKEN',
    'PCINET_ABI_VERSION',
    'PCINET_LINK_F_SEAL',
    'PCINET_LINK_KEY',
    'PCINET_SEAL_MAX',
    'PCINET_SEAL_TAG',
    'PCINET_W_VIRTQ_DONE',
    'PCINET_VQ_F_INTERRUPT',
    'PCINET_VQ_F_EVENT_IDX',
    'PCINET_VQ_F_RECHECK',
  ];

  const c = (() => {
    const dir = mkdtempSync(join(tmpdir(), 'pcinet-abi-'));
    try {
      const lines = [
        ...structs.map((s) => `printf("\\"sizeof ${s}\\": %zu,\\n", sizeof(struct pcinet_${s}));`),
        ...fields.map(([s, f]) => `printf("\\"${s}.${f}\\": %zu,\\n", offsetof(struct pcinet_${s}, ${f}));`),
        ...numbers.map((n) => `printf("\\"${n}\\": %lu,\\n", (unsigned long)(${n}));`),
      ];
      const src = [
        '#include <stddef.h>',
        '#include <stdio.h>',
        '#include "uapi/pcinet.h"',
        'int main(void) {',
        'printf("{\\n");',
        ...lines,
        'printf("\\"magic\\": \\"%s\\",\\n", PCINET_LINK_MAGIC);',
        'printf("\\"end\\": 0}\\n");',
        'return 0;',
        '}',
      ].join('\n');
      writeFileSync(join(dir, 'layout.c'), src);
      const kernel = resolve(import.meta.dirname, '../kernel');
      execFileSync('cc', [
        '-Wall',
        '-Werror',
        '-I',
        kernel,
        '-o',
        join(dir, 'layout'),
        join(dir, 'layout.c'),
      ]);
      return JSON.parse(execFileSync(join(dir, 'layout')).toString()) as Record<string, number>;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();

  it('numbers and limits match', () => {
    expect(c.PCINET_W_PUSH_RULE).toBe(W.PUSH_RULE);
    expect(c.PCINET_R_PUSH).toBe(R.PUSH);
    expect(c.PCINET_R_PUSH_DROP).toBe(R.PUSH_DROP);
    expect(c.PCINET_R_PUSH_RULE_SET).toBe(R.PUSH_RULE_SET);
    expect([c.PCINET_PUSH_NONE, c.PCINET_PUSH_NVME_SQ, c.PCINET_PUSH_VIRTQ]).toEqual([
      PUSH_KIND.NONE,
      PUSH_KIND.NVME_SQ,
      PUSH_KIND.VIRTQ,
    ]);
    expect(c.PCINET_PUSH_F_INDIRECT).toBe(PUSH_F_INDIRECT);
    expect(c.PCINET_MAX_PUSH_RULES).toBe(MAX_PUSH_RULES);
    expect(c.PCINET_PUSH_MAX_BYTES).toBe(PUSH_MAX_BYTES);
    expect(c.PCINET_MAX_DATA).toBe(MAX_DATA);
  });

  it('every record built here has its struct’s size', () => {
    expect(c['sizeof w_attach']).toBe(ATTACH_SIZE);
    expect(c['sizeof w_range']).toBe(rangeRecord(0, 1, 0n, 1n).length);
    expect(c['sizeof w_shadow']).toBe(shadowRecord(0, 0n, new Uint8Array(8)).length - 8);
    expect(c['sizeof w_writes_applied']).toBe(writesAppliedRecord(0n).length);
    expect(c['sizeof w_mmio_read_cpl']).toBe(mmioReadCplRecord(1, true, new Uint8Array(8)).length);
    expect(c['sizeof w_dma_read']).toBe(dmaReadRecord(1, 0n, 8).length);
    expect(c['sizeof w_dma_write']).toBe(dmaWriteRecord(0n, new Uint8Array(8)).length - 8);
    expect(c['sizeof w_interrupt']).toBe(interruptRecord(0).length);
    expect(c['sizeof w_push_rule']).toBe(PUSH_RULE_SIZE);
    expect(emptyRecord(W.START).length).toBe(8);
  });

  it('W_VIRTQ_DONE: number, flags, field offsets', () => {
    expect(c.PCINET_W_VIRTQ_DONE).toBe(W.VIRTQ_DONE);
    expect([c.PCINET_VQ_F_INTERRUPT, c.PCINET_VQ_F_EVENT_IDX, c.PCINET_VQ_F_RECHECK]).toEqual([
      VQ_F.INTERRUPT,
      VQ_F.EVENT_IDX,
      VQ_F.RECHECK,
    ]);
    expect(c['sizeof w_virtq_done']).toBe(VIRTQ_DONE_SIZE);
    const b = virtqDoneRecord({ id: 3, flags: 7, vector: 2, oldUsed: 0x1fffe, newUsed: 5, kick: 1 });
    expect(b.length).toBe(VIRTQ_DONE_SIZE);
    for (const [f, at, bytes, v] of [
      ['id', 8, 4, 3],
      ['flags', 12, 4, 7],
      ['vector', 16, 4, 2],
      ['old_used', 20, 2, 0xfffe],
      ['new_used', 22, 2, 5],
      ['kick', 24, 2, 1],
    ] as const) {
      expect(c[`w_virtq_done.${f}`]).toBe(at);
      expect(b.readUIntLE(at, bytes)).toBe(v);
    }
  });

  it('the kernel link: W_CONNECT fields, the hello, R_LINK_CLOSED', () => {
    expect(c.PCINET_W_CONNECT).toBe(W.CONNECT);
    expect(c.PCINET_R_LINK_CLOSED).toBe(R.LINK_CLOSED);
    expect(c.PCINET_LINK_TOKEN).toBe(LINK_TOKEN);
    expect(c.PCINET_ABI_VERSION).toBe(ABI_VERSION);
    expect((c as unknown as { magic: string }).magic).toBe(LINK_MAGIC.toString('latin1'));
    expect(c['sizeof link_hello']).toBe(LINK_HELLO_SIZE);
    expect(c['link_hello.magic']).toBe(0);
    expect(c['link_hello.token']).toBe(8);
    expect(c['link_hello.abi_version']).toBe(24);
    const token = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    const b = connectRecord({
      family: 4,
      address: Uint8Array.of(10, 0, 2, 2),
      port: 7470,
      timeoutMs: 5000,
      token,
    });
    expect(b.length).toBe(c['sizeof w_connect']);
    expect(b.length).toBe(CONNECT_SIZE);
    expect(b.readUInt16LE(c['w_connect.family']!)).toBe(2);
    expect(b.readUInt16BE(c['w_connect.port']!)).toBe(7470);
    expect(b.readUInt32LE(c['w_connect.timeout_ms']!)).toBe(5000);
    expect([...b.subarray(c['w_connect.addr']!, c['w_connect.addr']! + 4)]).toEqual([10, 0, 2, 2]);
    expect([...b.subarray(c['w_connect.token']!, c['w_connect.token']! + 16)]).toEqual([...token]);
    expect(b.readUInt32LE(c['w_connect.flags']!)).toBe(0);
    const key = Uint8Array.from({ length: 32 }, (_, i) => 100 + i);
    const sealed = connectRecord({
      family: 6,
      address: new Uint8Array(16),
      port: 1,
      timeoutMs: 1,
      token,
      key,
    });
    expect(sealed.readUInt16LE(c['w_connect.family']!)).toBe(10);
    expect(sealed.readUInt32LE(c['w_connect.flags']!)).toBe(c.PCINET_LINK_F_SEAL);
    expect([...sealed.subarray(c['w_connect.key']!, c['w_connect.key']! + 32)]).toEqual([...key]);
    expect([c.PCINET_LINK_F_SEAL, c.PCINET_LINK_KEY, c.PCINET_SEAL_MAX, c.PCINET_SEAL_TAG]).toEqual([
      LINK_F_SEAL,
      LINK_KEY,
      SEAL_MAX,
      SEAL_TAG,
    ]);
    const closed = Buffer.alloc(c['sizeof r_link_closed']!);
    closed.writeUInt16LE(R.LINK_CLOSED, 0);
    closed.writeUInt32LE(closed.length, 4);
    closed.writeUInt32LE(104, c['r_link_closed.error']!);
    expect(parseRecords(closed)).toEqual([{ type: 'link-closed', error: 104 }]);
  });

  it('W_PUSH_RULE fields sit where pushRuleRecord writes them', () => {
    const b = pushRuleRecord({
      id: 0x11,
      kind: 0x22,
      bar: 0x33,
      entries: 0x44,
      offset: 0x55n,
      ring: 0x66n,
      avail: 0x77n,
      dataMax: 0x88,
      lbaShift: 0x99,
      flags: 0xaa,
      shadow: 0xbbn,
    });
    const at = (f: string) => c[`w_push_rule.${f}`]!;
    expect(b.readUInt32LE(at('id'))).toBe(0x11);
    expect(b.readUInt32LE(at('kind'))).toBe(0x22);
    expect(b.readUInt32LE(at('bar'))).toBe(0x33);
    expect(b.readUInt32LE(at('entries'))).toBe(0x44);
    expect(b.readBigUInt64LE(at('offset'))).toBe(0x55n);
    expect(b.readBigUInt64LE(at('ring'))).toBe(0x66n);
    expect(b.readBigUInt64LE(at('avail'))).toBe(0x77n);
    expect(b.readUInt32LE(at('data_max'))).toBe(0x88);
    expect(b.readUInt32LE(at('lba_shift'))).toBe(0x99);
    expect(b.readUInt32LE(at('flags'))).toBe(0xaa);
    expect(b.readUInt32LE(at('reserved'))).toBe(0);
    expect(b.readBigUInt64LE(at('shadow'))).toBe(0xbbn);
  });

  it('R_PUSH, R_PUSH_DROP and R_PUSH_RULE_SET parse from the C offsets', () => {
    const push = Buffer.alloc(c['sizeof r_push']! + 8);
    push.writeUInt16LE(R.PUSH, 0);
    push.writeUInt32LE(push.length, 4);
    push.writeUInt32LE(3, c['r_push.size']!);
    push.writeUInt32LE(9, c['r_push.rule']!);
    push.writeBigUInt64LE(0xabc000n, c['r_push.iova']!);
    push.set([7, 8, 9], c['r_push.data']!);
    const drop = Buffer.alloc(c['sizeof r_push_drop']!);
    drop.writeUInt16LE(R.PUSH_DROP, 0);
    drop.writeUInt32LE(drop.length, 4);
    drop.writeBigUInt64LE(0x5000n, c['r_push_drop.iova']!);
    drop.writeBigUInt64LE(0x3000n, c['r_push_drop.length']!);
    const set = Buffer.alloc(c['sizeof r_push_rule_set']!);
    set.writeUInt16LE(R.PUSH_RULE_SET, 0);
    set.writeUInt32LE(set.length, 4);
    set.writeUInt32LE(9, c['r_push_rule_set.id']!);
    expect(plain(parseRecords(Buffer.concat([push, drop, set])))).toEqual([
      { type: 'push', rule: 9, iova: 0xabc000n, data: '070809' },
      { type: 'push-drop', iova: 0x5000n, length: 0x3000n },
      { type: 'push-rule-set', id: 9 },
    ]);
  });
});
