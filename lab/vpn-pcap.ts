// Reading what tcpdump captured on a link of the VPN demo, and judging it: does the card's uplink
// carry anything but WireGuard? The file is parsed here rather than through `tcpdump -r` text,
// whose format changes between versions; the classic pcap format is fixed (the "libpcap file
// format", IETF draft-ietf-opsawg-pcap): a 24-byte file header, then per packet a 16-byte record
// header and the captured bytes.
//
// WireGuard message framing: "WireGuard: Next Generation Kernel Network Tunnel", §5.4 — every
// message starts with a one-byte type (1 handshake initiation, 2 response, 3 cookie reply,
// 4 transport data) followed by three reserved zero bytes.

/** Link-layer header types (tcpdump.org/linktypes.html) that tcpdump uses for the demo's links. */
export const LINKTYPE = {
  /** veth and TAP interfaces. */
  ETHERNET: 1,
  /** A TUN interface such as wireguard-go's: the packet starts with the IP header. */
  RAW: 101,
  /** `tcpdump -i any`. */
  LINUX_SLL: 113,
} as const;

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const PCAP_FILE_HEADER = 24;
const PCAP_RECORD_HEADER = 16;
/** A record larger than this is a corrupt file, not a packet (tcpdump's own MAXIMUM_SNAPLEN). */
const MAX_RECORD = 262_144;

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_ARP = 0x0806;
const ETHERTYPE_VLAN = 0x8100;
const ETHERTYPE_IPV6 = 0x86dd;
const IPPROTO_ICMP = 1;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const WG_MESSAGE_TYPES = new Set([1, 2, 3, 4]);

export type PacketKind = 'wireguard' | 'udp' | 'tcp' | 'icmp' | 'ipv4-other' | 'ipv6' | 'arp' | 'other';
export const PACKET_KINDS: readonly PacketKind[] = [
  'wireguard',
  'udp',
  'tcp',
  'icmp',
  'ipv4-other',
  'ipv6',
  'arp',
  'other',
];

export interface Packet {
  kind: PacketKind;
  /** IPv4 source and destination (ARP: sender and target protocol address). */
  src?: string;
  dst?: string;
  sport?: number;
  dport?: number;
}

export interface CaptureSummary {
  packets: number;
  byKind: Record<PacketKind, number>;
  /** Every IPv4 address seen in a header (IP or ARP), sorted. */
  addresses: string[];
  /** Packets whose captured bytes contain the marker (0 without a marker). */
  markerPackets: number;
}

export interface PcapFile {
  linkType: number;
  records: Uint8Array[];
}

/** Splits a pcap file into its records. Throws on anything that is not a whole, sane file. */
export function readPcap(file: Uint8Array): PcapFile {
  if (file.length < PCAP_FILE_HEADER) throw new Error(`pcap: ${file.length} bytes, shorter than its header`);
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  let le: boolean;
  const magic = view.getUint32(0, true);
  if (magic === PCAP_MAGIC_US || magic === PCAP_MAGIC_NS) le = true;
  else if (view.getUint32(0, false) === PCAP_MAGIC_US || view.getUint32(0, false) === PCAP_MAGIC_NS)
    le = false;
  else throw new Error(`pcap: bad magic 0x${magic.toString(16)} (pcapng is not read here)`);
  const linkType = view.getUint32(20, le) & 0xffff;
  const records: Uint8Array[] = [];
  let at = PCAP_FILE_HEADER;
  while (at < file.length) {
    if (file.length - at < PCAP_RECORD_HEADER) throw new Error(`pcap: truncated record header at ${at}`);
    const caplen = view.getUint32(at + 8, le);
    if (caplen > MAX_RECORD) throw new Error(`pcap: record at ${at} claims ${caplen} bytes`);
    const start = at + PCAP_RECORD_HEADER;
    if (file.length - start < caplen) throw new Error(`pcap: truncated record at ${at}`);
    records.push(file.subarray(start, start + caplen));
    at = start + caplen;
  }
  return { linkType, records };
}

function ipv4(b: Uint8Array, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

/** Classifies one captured frame. Bytes cut off by the snapshot length make it 'other' only when
 *  even the headers that decide its kind are missing. */
export function classify(frame: Uint8Array, linkType: number, wgPort: number): Packet {
  let etherType: number;
  let at: number;
  if (linkType === LINKTYPE.ETHERNET) {
    if (frame.length < 14) return { kind: 'other' };
    etherType = (frame[12] << 8) | frame[13];
    at = 14;
    if (etherType === ETHERTYPE_VLAN && frame.length >= 18) {
      etherType = (frame[16] << 8) | frame[17];
      at = 18;
    }
  } else if (linkType === LINKTYPE.LINUX_SLL) {
    if (frame.length < 16) return { kind: 'other' };
    etherType = (frame[14] << 8) | frame[15];
    at = 16;
  } else if (linkType === LINKTYPE.RAW) {
    if (frame.length < 1) return { kind: 'other' };
    const version = frame[0] >> 4;
    etherType = version === 4 ? ETHERTYPE_IPV4 : version === 6 ? ETHERTYPE_IPV6 : 0;
    at = 0;
  } else {
    throw new Error(`pcap: link type ${linkType} is not read here`);
  }

  if (etherType === ETHERTYPE_IPV6) return { kind: 'ipv6' };
  if (etherType === ETHERTYPE_ARP) {
    // RFC 826 for Ethernet/IPv4: sender protocol address at 14, target at 24.
    if (frame.length < at + 28) return { kind: 'arp' };
    return { kind: 'arp', src: ipv4(frame, at + 14), dst: ipv4(frame, at + 24) };
  }
  if (etherType !== ETHERTYPE_IPV4 || frame.length < at + 20) return { kind: 'other' };
  const ihl = (frame[at] & 0x0f) * 4;
  const proto = frame[at + 9];
  const src = ipv4(frame, at + 12);
  const dst = ipv4(frame, at + 16);
  const l4 = at + ihl;
  if (proto === IPPROTO_ICMP) return { kind: 'icmp', src, dst };
  if (proto === IPPROTO_TCP) {
    if (frame.length < l4 + 4) return { kind: 'tcp', src, dst };
    return {
      kind: 'tcp',
      src,
      dst,
      sport: (frame[l4] << 8) | frame[l4 + 1],
      dport: (frame[l4 + 2] << 8) | frame[l4 + 3],
    };
  }
  if (proto !== IPPROTO_UDP) return { kind: 'ipv4-other', src, dst };
  if (frame.length < l4 + 8) return { kind: 'udp', src, dst };
  const sport = (frame[l4] << 8) | frame[l4 + 1];
  const dport = (frame[l4 + 2] << 8) | frame[l4 + 3];
  const p = l4 + 8;
  const wgHeader =
    frame.length >= p + 4 &&
    WG_MESSAGE_TYPES.has(frame[p]) &&
    frame[p + 1] === 0 &&
    frame[p + 2] === 0 &&
    frame[p + 3] === 0;
  const kind = (sport === wgPort || dport === wgPort) && wgHeader ? 'wireguard' : 'udp';
  return { kind, src, dst, sport, dport };
}

function contains(haystack: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength).indexOf(needle) >= 0;
}

export function summarize(
  pcap: PcapFile,
  opts: { wgPort: number; marker?: Uint8Array | undefined },
): CaptureSummary {
  const byKind = Object.fromEntries(PACKET_KINDS.map((k) => [k, 0])) as Record<PacketKind, number>;
  const addresses = new Set<string>();
  let markerPackets = 0;
  for (const frame of pcap.records) {
    const p = classify(frame, pcap.linkType, opts.wgPort);
    byKind[p.kind]++;
    if (p.src) addresses.add(p.src);
    if (p.dst) addresses.add(p.dst);
    if (opts.marker && opts.marker.length > 0 && contains(frame, opts.marker)) markerPackets++;
  }
  return {
    packets: pcap.records.length,
    byKind,
    addresses: [...addresses].sort(),
    markerPackets,
  };
}

/** 'a.b.c.d/n' as [network, mask]. */
function parseCidr(cidr: string): [number, number] {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr);
  if (!m || Number(m[5]) > 32) throw new Error(`not an IPv4 prefix: ${cidr}`);
  const bits = Number(m[5]);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return [(ipToInt(`${m[1]}.${m[2]}.${m[3]}.${m[4]}`) & mask) >>> 0, mask];
}

function ipToInt(a: string): number {
  return a.split('.').reduce((n, o) => ((n << 8) | Number(o)) >>> 0, 0);
}

export function inPrefix(addr: string, cidr: string): boolean {
  const [net, mask] = parseCidr(cidr);
  return (ipToInt(addr) & mask) >>> 0 === net;
}

/**
 * What a capture on the uplink shows that it must not: anything but WireGuard messages and ARP,
 * any address of the private networks behind the tunnel, the marker the workstation put in its
 * payloads. An empty list means the uplink carried only ciphertext. A capture without a single
 * WireGuard message proves nothing, so it is a problem too.
 */
export function plaintextProblems(s: CaptureSummary, opts: { privateNets: readonly string[] }): string[] {
  const problems: string[] = [];
  if (s.byKind.wireguard === 0)
    problems.push('no WireGuard messages at all: nothing went through the tunnel');
  for (const kind of PACKET_KINDS) {
    if (kind === 'wireguard' || kind === 'arp' || s.byKind[kind] === 0) continue;
    problems.push(`${s.byKind[kind]} ${kind} packet(s)`);
  }
  const leaked = s.addresses.filter((a) => opts.privateNets.some((net) => inPrefix(a, net)));
  if (leaked.length > 0) problems.push(`private addresses in headers: ${leaked.join(', ')}`);
  if (s.markerPackets > 0) problems.push(`the payload marker appears in ${s.markerPackets} packet(s)`);
  return problems;
}

/** One line for logs: "1234 packets: wireguard 1230, arp 4". */
export function formatSummary(s: CaptureSummary): string {
  const kinds = PACKET_KINDS.filter((k) => s.byKind[k] > 0).map((k) => `${k} ${s.byKind[k]}`);
  const marker = s.markerPackets > 0 ? `; marker in ${s.markerPackets}` : '';
  return `${s.packets} packets${kinds.length ? `: ${kinds.join(', ')}` : ''}${marker}`;
}
