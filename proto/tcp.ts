// Stream transports: plain TCP and TLS (mutual authentication, peers pinned by key fingerprint).
// Both carry length-prefixed frames (framing.ts) over a net.Socket / tls.TLSSocket.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { encodeControl, type FrameParts, partsLength } from './codec.js';
import type { PlacedFrame, Placer, Placing } from './frame-place.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { fingerprintOf, type Identity } from './identity.js';
import { LINK_HELLO_SIZE, LINK_MAGIC } from './kernel-abi.js';
import type { Transport, TransportEvents } from './transport.js';
import { ErrorCode, ProtocolError } from './wire.js';

/** How long a TLS handshake (including the peer's certificate check) may take. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** Accepted connections still in their handshake (first bytes, TLS) at once; more are reset as
 *  they arrive. A flood of strangers (unknown keys, half-open connections) then costs a bounded
 *  amount of memory and CPU, and sessions already running carry on. Far above what hosts need:
 *  one session and one kernel link per device each. */
export const MAX_HANDSHAKES = 64;

/** Client side: our identity, and the endpoint fingerprint we accept. */
export interface TlsClientAuth {
  identity: Identity;
  pin: string;
}

/** Server side: our identity, and the host fingerprints we accept. */
export interface TlsServerAuth {
  identity: Identity;
  allow: readonly string[];
}

/** A socket that reads into the parser's buffers (net's `onread`, plain TCP clients): the parser,
 *  and where its reads go until the transport takes them. */
interface DirectReads {
  parser: FrameParser;
  setSink(sink: (n: number) => void): void;
}

export class SocketTransport extends EventEmitter<TransportEvents> implements Transport, Placing {
  readonly remote: string;
  readonly peerFingerprint: string | undefined;
  readonly copiesOut = true;
  readonly #socket: net.Socket;
  readonly #parser: FrameParser;
  /** The parser reads into our buffers, so it can place frames (frame-place.ts). */
  readonly #direct: boolean;
  /** Frames parsed while paused, delivered on resume. */
  #held: (Uint8Array | PlacedFrame)[] = [];
  /** Frames of the read being handled, not handed over yet. */
  #parsed: (Uint8Array | PlacedFrame)[] = [];
  #paused = false;
  #closed = false;
  /** A framing error: nothing more is read. */
  #closedForInput = false;
  #error: Error | undefined;

  constructor(socket: net.Socket, remote: string, peerFingerprint?: string, direct?: DirectReads) {
    super();
    this.#socket = socket;
    this.remote = remote;
    this.peerFingerprint = peerFingerprint;
    socket.setNoDelay(true);
    this.#parser = direct?.parser ?? new FrameParser();
    this.#direct = direct !== undefined;
    if (direct) direct.setSink((n) => this.#onFrames(() => this.#parser.filled(n)));
    else socket.on('data', (chunk: Buffer) => this.#onFrames(() => this.#parser.push(chunk)));
    socket.on('drain', () => this.emit('drain'));
    socket.on('error', (e) => {
      this.#error ??= e;
    });
    socket.on('end', () => {
      // A connection cut in the middle of a frame is a lost connection, not a peer error: the
      // frame was never delivered, and a resume replays it.
      if (this.#parser.pending > 0) {
        this.#error ??= new Error(`connection ended inside a frame (${this.#parser.pending} bytes)`);
      }
    });
    socket.on('close', () => this.#finish());
  }

  send(frame: Uint8Array | FrameParts): boolean {
    if (this.#closed || this.#socket.destroyed) return false;
    const parts = frame instanceof Uint8Array ? [frame] : frame;
    // Corked, the prefix and every part leave in one writev: nothing is copied here. (Corked to the
    // end of the tick instead, so that a burst of frames is one writev, cost more CPU per byte and
    // throughput in bench/transport: the peer waits longer for each frame.)
    this.#socket.cork();
    this.#socket.write(lengthPrefix(partsLength(parts)));
    let ok = true;
    for (const p of parts) ok = this.#socket.write(p);
    this.#socket.uncork();
    return ok;
  }

  dropQueued(): boolean {
    // Counts every write until the kernel has taken all of it (a write completed synchronously is
    // no longer counted when send() returns); destroy() closes the descriptor at once and discards
    // the rest.
    if (this.#closed || this.#socket.destroyed || this.#socket.writableLength === 0) return false;
    this.#error ??= new Error('writes dropped: memory they were to send was taken back');
    this.#closedForInput = true;
    this.#socket.destroy();
    return true;
  }

  setPlacer(p: Placer | undefined): void {
    // Only a socket reading into our buffers can read data where it belongs.
    if (!this.#direct) return;
    const parser = this.#parser;
    parser.placer = p && {
      // A frame is placed only when those before it have been taken (none held while paused): its
      // placer then knows everything in front of it.
      place: (head, cancel) => (this.#paused || this.#held.length > 0 ? undefined : p.place(head, cancel)),
      arrived: (f) => p.arrived(f),
    };
    // A place cancelled while its frame is still ours (being read, its tail, or read but not handed
    // over yet): nothing more is read and the frame is dropped; the session resumes on a new
    // connection, where it is replayed and decoded.
    parser.onCancel = (place) => {
      const ours = (f: Uint8Array | PlacedFrame) => !(f instanceof Uint8Array) && f.data === place;
      if (parser.holds(place) || this.#held.some(ours) || this.#parsed.some(ours))
        this.close(new Error('a placed frame was cancelled before it was handed over'));
    };
    if (!p && parser.placing) {
      // The next read would land in the place given whatever the parser is told now: nothing more
      // is read (the session that placed it has left this connection); what was sent still goes.
      this.close(new Error('connection left in the middle of a placed frame'));
    }
  }

  pause(): void {
    this.#paused = true;
    this.#socket.pause();
  }

  resume(): void {
    this.#paused = false;
    while (!this.#paused && !this.#closed && this.#held.length > 0) this.#deliver(this.#held.shift()!);
    if (!this.#paused) this.#socket.resume();
  }

  close(err?: Error): void {
    if (this.#closed) return;
    this.#error ??= err;
    if (err) {
      // Nothing more is read; what was sent (the Error frame telling the peer why) still goes
      // out before the connection closes: a TLS socket over a stream (listenTcp's) writes later
      // than the call, and destroying it now would lose it.
      this.#closedForInput = true;
      this.#socket.pause();
    }
    this.#socket.end();
    // A peer that never closes its half must not keep us waiting.
    setTimeout(() => this.#socket.destroy(), err ? 1000 : 2000).unref();
  }

  /** Frames that `parse` (the parser fed one read) completed. */
  #onFrames(parse: () => (Uint8Array | PlacedFrame)[]): void {
    if (this.#closed || this.#closedForInput) return;
    let frames: (Uint8Array | PlacedFrame)[];
    try {
      frames = parse();
    } catch (e) {
      this.#broken(e as ProtocolError);
      return;
    }
    this.#parsed = frames;
    while (frames.length > 0) {
      const f = frames.shift()!;
      if (this.#closed || this.#closedForInput) break;
      if (this.#paused || this.#held.length > 0) this.#held.push(f);
      else this.#deliver(f);
    }
    this.#parsed = [];
  }

  /** A frame to whoever takes it: bytes as 'frame', a placed one to the placer (none left: the
   *  session that placed it has left this connection, as it has its 'frame' listener). */
  #deliver(f: Uint8Array | PlacedFrame): void {
    if (f instanceof Uint8Array) this.emit('frame', f);
    else this.#parser.placer?.arrived(f);
  }

  /** The byte stream cannot be framed any more: tell the peer why (its last frame) and close. */
  #broken(e: ProtocolError): void {
    this.#error ??= e;
    this.#closedForInput = true;
    this.#socket.pause();
    const farewell = encodeControl(0, [{ error: { code: e.code, message: e.message } }]);
    this.#socket.write(lengthPrefix(farewell.length));
    this.#socket.end(farewell);
    setTimeout(() => this.#socket.destroy(), 1000).unref();
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.emit('close', this.#error);
  }
}

function tlsOptions(identity: Identity): tls.SecureContextOptions {
  return { key: identity.key, cert: identity.cert, minVersion: 'TLSv1.3' };
}

/** The authenticated peer's key fingerprint, or undefined if it presented no certificate. */
export function peerFingerprintOf(socket: tls.TLSSocket): string | undefined {
  const cert = socket.getPeerX509Certificate();
  return cert ? fingerprintOf(cert.publicKey) : undefined;
}

function hostLabel(host: string): string {
  return net.isIPv6(host) ? `[${host}]` : host;
}

/** Connects; with `auth`, over TLS, refusing an endpoint whose key is not the pinned one. */
export function dialTcp(host: string, port: number, auth?: TlsClientAuth): Promise<SocketTransport> {
  const label = `${auth ? 'tls' : 'tcp'}://${hostLabel(host)}:${port}`;
  return new Promise((resolve, reject) => {
    let socket: net.Socket;
    const fail = (e: Error) => {
      socket.destroy();
      reject(e);
    };
    const timer = setTimeout(
      () =>
        fail(
          new ProtocolError(ErrorCode.TIMEOUT, `${label}: no connection within ${HANDSHAKE_TIMEOUT_MS} ms`),
        ),
      HANDSHAKE_TIMEOUT_MS,
    );
    const done = (fp?: string) => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(new SocketTransport(socket, label, fp));
    };
    if (!auth) {
      // Frames are read into buffers of the parser's choosing: a large one straight into its own.
      const parser = new FrameParser();
      let sink = (n: number): void => {
        // Nothing arrives before our Hello; a peer that talks first gets no frames until it does.
        parser.filled(n);
      };
      const direct: DirectReads = { parser, setSink: (s) => (sink = s) };
      socket = net.connect({
        host,
        port,
        onread: {
          buffer: () => parser.readBuffer(),
          callback: (n: number) => {
            sink(n);
            return true; // pausing is the transport's pause(), as with 'data'
          },
        },
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new SocketTransport(socket, label, undefined, direct));
      });
    } else {
      socket = tls.connect({
        host,
        port,
        ...tlsOptions(auth.identity),
        // The endpoint's certificate is self-signed; trust comes from the pinned key, checked here.
        rejectUnauthorized: false,
        servername: net.isIP(host) ? undefined : host,
      });
      socket.once('secureConnect', () => {
        const fp = peerFingerprintOf(socket as tls.TLSSocket);
        if (fp !== auth.pin) {
          clearTimeout(timer);
          fail(
            new ProtocolError(
              ErrorCode.AUTH_REFUSED,
              `${label}: endpoint key ${fp ?? '(none)'} is not the pinned ${auth.pin}`,
            ),
          );
          return;
        }
        done(fp);
      });
    }
    socket.once('error', (e) => {
      clearTimeout(timer);
      fail(e);
    });
  });
}

export interface Listener {
  /** Where it listens, e.g. "tls://127.0.0.1:7470" (with the real port when 0 was asked for). */
  readonly address: string;
  readonly port: number;
  close(): Promise<void>;
  /** Handshakes in flight now and at most so far, connections reset because MAX_HANDSHAKES were
   *  (TCP listeners). */
  handshakes?(): { now: number; most: number; turnedAway: number };
}

/** A kernel link's first bytes (struct pcinet_link_hello, docs/KERNEL-ABI.md). */
export interface LinkHello {
  token: Uint8Array;
  abiVersion: number;
  /** Set when the socket reads into buffers of the reader's choosing (net's `onread`): it emits
   *  no 'data'; whoever takes the link sets `reads` before resuming the socket. */
  reads?: SocketReads;
}

/** Where a socket made with net's `onread` reads: `buffer()` gives the next read's buffer, `sink`
 *  hears how many bytes landed in it. Changeable at any time between reads. */
export interface SocketReads {
  buffer: () => Uint8Array;
  sink: (n: number, buffer: Uint8Array) => void;
}

/** How long a connection may take to show whether it is a session or a kernel link. */
const SNIFF_MS = HANDSHAKE_TIMEOUT_MS;

/** A session's first bytes or a kernel link's hello? No frame can start with the magic (as a
 *  length it is far over MAX_FRAME_BYTES), nor a TLS ClientHello (its first byte is 0x16). */
function sniffVerdict(got: Uint8Array): 'session' | 'link' | undefined {
  const n = Math.min(got.length, LINK_MAGIC.length);
  if (!Buffer.from(got.buffer, got.byteOffset, n).equals(LINK_MAGIC.subarray(0, n))) return 'session';
  return got.length >= LINK_HELLO_SIZE ? 'link' : undefined;
}

function helloOf(got: Uint8Array, reads?: SocketReads): LinkHello {
  const b = Buffer.from(got.buffer, got.byteOffset, got.length);
  return { token: Uint8Array.prototype.slice.call(b, 8, 24), abiVersion: b.readUInt32LE(24), reads };
}

/** Takes the first bytes of an accepted connection: a kernel link's hello goes to onLink (with the
 *  socket, paused), anything else is a session's first frame and the socket goes to onSession
 *  with those bytes put back. */
function sniff(
  s: net.Socket,
  onSession: () => void,
  onLink: (socket: net.Socket, hello: LinkHello) => void,
): void {
  let got = Buffer.alloc(0);
  const timer = setTimeout(() => s.destroy(), SNIFF_MS);
  const onData = (chunk: Buffer) => {
    got = Buffer.concat([got, chunk]);
    const verdict = sniffVerdict(got);
    if (verdict === 'session') {
      done();
      s.unshift(got);
      onSession();
    } else if (verdict === 'link') {
      done();
      if (got.length > LINK_HELLO_SIZE) s.unshift(got.subarray(LINK_HELLO_SIZE));
      onLink(s, helloOf(got));
    }
  };
  const done = () => {
    clearTimeout(timer);
    s.off('data', onData);
    s.pause();
  };
  s.on('data', onData);
  s.once('close', () => clearTimeout(timer));
  s.resume();
}

/**
 * An accepted plain-TCP socket that reads into buffers of our choosing. Node 20 offers `onread`
 * only to sockets it connects itself; an accepted one, created paused with nothing read yet, gets
 * it by moving its handle into a new net.Socket made with `onread` (the old object keeps no
 * handle; destroying it only settles the server's connection count, which happens when the new
 * one closes). Undefined when this Node's sockets are not built that way: then 'data' it is.
 */
export function adoptWithReads(s: net.Socket, reads: SocketReads): net.Socket | undefined {
  const inner = s as unknown as { _handle?: { useUserBuffer?: unknown; reading?: boolean } | null };
  const handle = inner._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || handle.reading) return undefined;
  inner._handle = null;
  const adopted = new net.Socket({
    handle,
    onread: {
      buffer: () => reads.buffer(),
      callback: (n: number, buf: Uint8Array) => {
        reads.sink(n, buf);
        return true; // pausing is pause(), as with 'data'
      },
    },
  } as net.SocketConstructorOpts);
  adopted.once('close', () => s.destroy());
  return adopted;
}

/** Listens; every accepted (and, with `auth`, authenticated) connection goes to onTransport. A host
 *  whose key is not allowed is refused before a single frame is read: `onRefused` hears about it and
 *  the connection gets an Error{AUTH_REFUSED} frame, then closes. With `onLink`, kernel links
 *  (connections pcinet.ko opened, which start with its hello instead of a frame or a TLS
 *  ClientHello) go there instead. */
export function listenTcp(
  host: string,
  port: number,
  auth: TlsServerAuth | undefined,
  onTransport: (t: Transport) => void,
  onRefused: (remote: string, why: string) => void = () => {},
  refusal: (why: string) => Uint8Array = () => new Uint8Array(),
  onLink?: (socket: net.Socket, hello: LinkHello) => void,
): Promise<Listener> {
  const scheme = auth ? 'tls' : 'tcp';
  const remoteOf = (s: net.Socket) => `${scheme}://${hostLabel(s.remoteAddress ?? '?')}:${s.remotePort ?? 0}`;
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };
  const shakes = { now: 0, most: 0, turnedAway: 0 };
  /** Counts a connection's handshake until `done` is called (or the socket closes). */
  const handshaking = (s: net.Socket) => {
    shakes.now++;
    shakes.most = Math.max(shakes.most, shakes.now);
    let over = false;
    const done = () => {
      if (over) return;
      over = true;
      shakes.now--;
    };
    s.once('close', done);
    return done;
  };
  const secureContext = auth ? tls.createSecureContext(tlsOptions(auth.identity)) : undefined;
  /** TLS on an accepted socket; the host must present an allowed key. */
  const startTls = (raw: net.Socket, a: TlsServerAuth, shaken: () => void) => {
    const remote = remoteOf(raw);
    // The socket may hold bytes sniff() put back, and a TLSSocket over a net.Socket reads its
    // handle, past them: it reads through a stream instead. That stream does not tell the
    // TLSSocket when the connection closes, so the raw socket does.
    const s = new tls.TLSSocket(Duplex.from({ readable: raw, writable: raw }), {
      isServer: true,
      secureContext,
      requestCert: true,
      rejectUnauthorized: false,
    });
    raw.once('close', () => s.destroy());
    let secure = false;
    const timer = setTimeout(() => {
      onRefused(remote, `TLS: no handshake within ${HANDSHAKE_TIMEOUT_MS} ms`);
      raw.destroy();
    }, HANDSHAKE_TIMEOUT_MS);
    s.on('error', (e) => {
      if (secure) return; // the transport's own business from then on
      clearTimeout(timer);
      onRefused(remote, `TLS: ${e.message}`);
      raw.destroy();
    });
    s.once('secure', () => {
      secure = true;
      shaken();
      clearTimeout(timer);
      const fp = peerFingerprintOf(s);
      if (!fp || !a.allow.includes(fp)) {
        const why = fp ? `host key ${fp} is not allowed` : 'host presented no certificate';
        onRefused(remote, why);
        const r = refusal(why);
        // One write: a TLSSocket over a stream (startTls) asserts inside Node when a second write
        // reaches the stream before the first is done (seen with a flood of refused strangers:
        // ERR_INTERNAL_ASSERTION, uncaught, in the endpoint process).
        if (r.length > 0) s.end(Buffer.concat([lengthPrefix(r.length), r]));
        else s.end();
        setTimeout(() => raw.destroy(), 1000).unref();
        return;
      }
      onTransport(new SocketTransport(s, remote, fp));
    });
    raw.resume();
  };
  /** Plain TCP, the socket reading into our buffers: the first bytes decide between a session
   *  (its frames read by the parser, large ones straight into their own buffers) and a kernel link
   *  (onLink sets where its reads go). */
  const direct = (raw: net.Socket): boolean => {
    const remote = remoteOf(raw);
    // The hello's size exactly: nothing past it is read before we know who reads it.
    const head = new Uint8Array(LINK_HELLO_SIZE);
    let got = 0;
    const parser = new FrameParser();
    let toParser = (n: number): void => void parser.filled(n);
    const sessionReads = () => {
      reads.buffer = () => parser.readBuffer();
      reads.sink = (n) => toParser(n);
    };
    const reads: SocketReads = { buffer: () => head.subarray(got), sink: () => {} };
    // Every read lands in the buffer the last call of reads.buffer() gave (Node asks for the next
    // one after each read's callback): switch providers only inside a read's callback or before
    // the socket exists.
    if (!onLink) sessionReads();
    const s = adoptWithReads(raw, reads);
    if (!s) return false;
    track(s);
    // Until the session or the link listens for its errors itself, a reset (a peer gone while we
    // sniff its first bytes) only ends the connection.
    s.on('error', () => s.destroy());
    s.setNoDelay(true);
    const session = () => {
      onTransport(new SocketTransport(s, remote, undefined, { parser, setSink: (f) => (toParser = f) }));
      // The bytes sniffed are the start of the first frame: they go in as a first read would.
      if (got > 0) {
        parser.readBuffer().set(head.subarray(0, got));
        toParser(got);
      }
    };
    if (!onLink) {
      session();
      return true;
    }
    const timer = setTimeout(() => s.destroy(), SNIFF_MS);
    s.once('close', () => clearTimeout(timer));
    reads.sink = (n) => {
      got += n;
      const verdict = sniffVerdict(head.subarray(0, got));
      if (!verdict) return;
      clearTimeout(timer);
      if (verdict === 'session') {
        sessionReads();
        session();
        return;
      }
      // Paused until the link says where its reads go and resumes.
      s.pause();
      reads.buffer = () => new Uint8Array(LINK_HELLO_SIZE);
      reads.sink = () => s.destroy(new Error('kernel link read before anyone took it'));
      onLink(s, helloOf(head, reads));
    };
    return true;
  };
  // Accepted sockets start paused: nothing is read before we know who reads it.
  const server = net.createServer({ pauseOnConnect: true }, (s) => {
    if (!auth && direct(s)) return;
    track(s);
    // Until a transport takes the socket (and listens for its errors itself), a peer that resets
    // it (a port scan, a half-open connection from a network that went away) only ends it.
    s.on('error', () => s.destroy());
    s.setNoDelay(true);
    if (shakes.now >= MAX_HANDSHAKES) {
      shakes.turnedAway++;
      // Said once per burst: the log must not be the flood's amplifier.
      if (shakes.turnedAway % 1000 === 1)
        onRefused(remoteOf(s), `${MAX_HANDSHAKES} handshakes in flight: connection reset`);
      s.resetAndDestroy();
      return;
    }
    const shaken = handshaking(s);
    const session = () => {
      if (auth) return startTls(s, auth, shaken);
      shaken();
      onTransport(new SocketTransport(s, remoteOf(s)));
      s.resume();
    };
    const link = (socket: net.Socket, hello: LinkHello) => {
      shaken();
      onLink!(socket, hello);
    };
    if (onLink) sniff(s, session, link);
    else session();
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address() as net.AddressInfo;
      resolve({
        address: `${scheme}://${hostLabel(a.address)}:${a.port}`,
        port: a.port,
        handshakes: () => ({ ...shakes }),
        close: () =>
          new Promise<void>((res) => {
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}
