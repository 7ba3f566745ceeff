// The capture reader and the uplink check, fed hand-built pcap files in hex.
import { describe, expect, it } from 'vitest';
import {
  classify,
  formatSummary,
  inPrefix,
  LINKTYPE,
  plaintextProblems,
  readPcap,
  summarize,
} from './vpn-pcap.js';

const WG_PORT = 51820;
const PRIVATE = ['10.77.0.0/24', '10.78.0.0/24'];

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** A little-endian, microsecond pcap file holding `frames`. */
function pcap(linkType: number, frames: Buffer[], bigEndian = false): Buffer {
  const head = Buffer.alloc(24);
  const u32 = (b: Buffer, v: number, at: number) =>
    bigEndian ? b.writeUInt32BE(v, at) : b.writeUInt32LE(v, at);
  const u16 = (b: Buffer, v: number, at: number) =>
    bigEndian ? b.writeUInt16BE(v, at) : b.writeUInt16LE(v, at);
  u32(head, 0xa1b2c3d4, 0);
  u16(head, 2, 4);
  u16(head, 4, 6);
  u32(head, 65535, 16);
  u32(head, linkType, 20);
  const recs = frames.map((f) => {
    const r = Buffer.alloc(16);
    u32(r, 1_700_000_000, 0);
    u32(r, f.length, 8);
    u32(r, f.length, 12);
    return Buffer.concat([r, f]);
  });
  return Buffer.concat([head, ...recs]);
}

const ETH = '020000000002 020000000001'; // dst, src MAC
// IPv4 headers (no options, checksums not checked): 192.0.2.1 → 192.0.2.2, UDP 40000 → 51820.
const WG_DATA = hex(`${ETH} 0800
  45000030 0000 4000 4011 0000 c0000201 c0000202
  9c40 ca6c 001c 0000
  04000000 11223344 0000000000000001 aabbccdd`);
const WG_INIT = hex(`${ETH} 0800
  45000030 0000 4000 4011 0000 c0000202 c0000201
  ca6c 9c40 001c 0000
  01000000 11223344 0000000000000000 aabbccdd`);
// UDP to the WireGuard port that is not WireGuard (reserved bytes set): plain UDP.
const NOT_WG = hex(`${ETH} 0800
  45000030 0000 4000 4011 0000 c0000201 c0000202
  9c40 ca6c 001c 0000
  04ffffff 11223344 0000000000000001 aabbccdd`);
// ICMP echo 10.77.0.2 → 10.78.0.2 with a payload marker "feedface".
const ICMP = hex(`${ETH} 0800
  45000024 0000 4000 4001 0000 0a4d0002 0a4e0002
  0800 0000 0001 0001 feedface 00000000`);
const TCP = hex(`${ETH} 0800
  45000028 0000 4000 4006 0000 0a4d0002 0a4e0002
  c350 1451 00000000 00000000 5002 ffff 0000 0000`);
// ARP who-has 192.0.2.2 tell 192.0.2.1.
const ARP = hex(`ffffffffffff 020000000001 0806
  0001 0800 06 04 0001 020000000001 c0000201 000000000000 c0000202`);
const IPV6 = hex('333300000001 020000000001 86dd 6000000000083aff');

describe('readPcap', () => {
  it('splits a file into its records, in either byte order', () => {
    for (const be of [false, true]) {
      const f = readPcap(pcap(LINKTYPE.ETHERNET, [WG_DATA, ARP], be));
      expect(f.linkType).toBe(LINKTYPE.ETHERNET);
      expect(f.records.map((r) => Buffer.from(r).toString('hex'))).toEqual([
        WG_DATA.toString('hex'),
        ARP.toString('hex'),
      ]);
    }
  });

  it('refuses what is not a whole pcap file', () => {
    expect(() => readPcap(hex('0a0d0d0a'))).toThrow(/shorter than its header/);
    expect(() => readPcap(Buffer.alloc(24))).toThrow(/bad magic 0x0/);
    const whole = pcap(LINKTYPE.ETHERNET, [WG_DATA]);
    expect(() => readPcap(whole.subarray(0, whole.length - 1))).toThrow(/truncated record at 24/);
    expect(() => readPcap(whole.subarray(0, 30))).toThrow(/truncated record header at 24/);
    const huge = Buffer.from(whole);
    huge.writeUInt32LE(1 << 20, 24 + 8);
    expect(() => readPcap(huge)).toThrow(/claims 1048576 bytes/);
  });
});

describe('classify', () => {
  it('tells WireGuard messages from other UDP by port and header', () => {
    expect(classify(WG_DATA, LINKTYPE.ETHERNET, WG_PORT)).toEqual({
      kind: 'wireguard',
      src: '192.0.2.1',
      dst: '192.0.2.2',
      sport: 40000,
      dport: WG_PORT,
    });
    expect(classify(WG_INIT, LINKTYPE.ETHERNET, WG_PORT).kind).toBe('wireguard');
    expect(classify(NOT_WG, LINKTYPE.ETHERNET, WG_PORT).kind).toBe('udp');
    expect(classify(WG_DATA, LINKTYPE.ETHERNET, 51821).kind).toBe('udp');
  });

  it('reads ICMP, TCP, ARP, IPv6 and raw IP (a TUN interface)', () => {
    expect(classify(ICMP, LINKTYPE.ETHERNET, WG_PORT)).toEqual({
      kind: 'icmp',
      src: '10.77.0.2',
      dst: '10.78.0.2',
    });
    expect(classify(TCP, LINKTYPE.ETHERNET, WG_PORT)).toMatchObject({
      kind: 'tcp',
      sport: 50000,
      dport: 5201,
    });
    expect(classify(ARP, LINKTYPE.ETHERNET, WG_PORT)).toEqual({
      kind: 'arp',
      src: '192.0.2.1',
      dst: '192.0.2.2',
    });
    expect(classify(IPV6, LINKTYPE.ETHERNET, WG_PORT).kind).toBe('ipv6');
    expect(classify(ICMP.subarray(14), LINKTYPE.RAW, WG_PORT).kind).toBe('icmp');
    expect(classify(hex('ab'), LINKTYPE.ETHERNET, WG_PORT).kind).toBe('other');
    expect(() => classify(ICMP, 147, WG_PORT)).toThrow(/link type 147/);
  });
});

describe('plaintextProblems', () => {
  it('passes an uplink with only WireGuard and ARP', () => {
    const s = summarize(readPcap(pcap(LINKTYPE.ETHERNET, [ARP, WG_INIT, WG_DATA])), {
      wgPort: WG_PORT,
      marker: hex('feedface'),
    });
    expect(formatSummary(s)).toBe('3 packets: wireguard 2, arp 1');
    expect(plaintextProblems(s, { privateNets: PRIVATE })).toEqual([]);
  });

  it('names every kind of plaintext it finds', () => {
    const s = summarize(readPcap(pcap(LINKTYPE.ETHERNET, [WG_DATA, ICMP, TCP, NOT_WG, IPV6])), {
      wgPort: WG_PORT,
      marker: hex('feedface'),
    });
    expect(s.markerPackets).toBe(1);
    expect(plaintextProblems(s, { privateNets: PRIVATE })).toEqual([
      '1 udp packet(s)',
      '1 tcp packet(s)',
      '1 icmp packet(s)',
      '1 ipv6 packet(s)',
      'private addresses in headers: 10.77.0.2, 10.78.0.2',
      'the payload marker appears in 1 packet(s)',
    ]);
  });

  it('does not pass an empty capture', () => {
    const s = summarize(readPcap(pcap(LINKTYPE.ETHERNET, [ARP])), { wgPort: WG_PORT });
    expect(plaintextProblems(s, { privateNets: PRIVATE })).toEqual([
      'no WireGuard messages at all: nothing went through the tunnel',
    ]);
  });

  it('matches prefixes', () => {
    expect(inPrefix('10.77.0.255', '10.77.0.0/24')).toBe(true);
    expect(inPrefix('10.77.1.0', '10.77.0.0/24')).toBe(false);
    expect(inPrefix('192.0.2.3', '192.0.2.0/30')).toBe(true);
    expect(inPrefix('8.8.8.8', '0.0.0.0/0')).toBe(true);
    expect(() => inPrefix('10.0.0.1', '10.0.0.0/33')).toThrow(/not an IPv4 prefix/);
  });
});
