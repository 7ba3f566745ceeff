// WebSocket transports (ws://, wss://): one binary message is one encoded Frame — the same bytes
// as inside a TCP length prefix. wss uses the same mutual TLS and key pinning as tls://.
import { EventEmitter } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import type WebSocket from 'ws';
import { encodeControl, type FrameParts } from './codec.js';
import type { Listener, TlsClientAuth, TlsServerAuth } from './tcp.js';
import { HANDSHAKE_TIMEOUT_MS, peerFingerprintOf } from './tcp.js';
import type { Transport, TransportEvents } from './transport.js';
import { ErrorCode, MAX_FRAME_BYTES, ProtocolError } from './wire.js';

/** Bytes buffered in the WebSocket before send() says "slow down". */
const WS_HIGH_WATER = 1 << 20;

export class WsTransport extends EventEmitter<TransportEvents> implements Transport {
  readonly remote: string;
  readonly peerFingerprint: string | undefined;
  readonly #ws: WebSocket;
  #closed = false;
  #error: Error | undefined;
  #wantDrain = false;
  /** Messages that arrived while paused (ws may deliver what it already parsed). */
  #held: Uint8Array[] = [];
  #paused = false;

  constructor(ws: WebSocket, remote: string, peerFingerprint?: string) {
    super();
    this.#ws = ws;
    this.remote = remote;
    this.peerFingerprint = peerFingerprint;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        const e = new ProtocolError(ErrorCode.MALFORMED, 'text WebSocket message (frames are binary)');
        this.#error ??= e;
        ws.send(encodeControl(0, [{ error: { code: e.code, message: e.message } }]), { binary: true });
        ws.close(1003, 'binary frames only');
        return;
      }
      if (this.#paused || this.#held.length > 0) this.#held.push(data);
      else this.emit('frame', data);
    });
    ws.on('error', (e: Error & { code?: string }) => {
      this.#error ??=
        e.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH'
          ? new ProtocolError(ErrorCode.FRAME_TOO_LARGE, e.message)
          : e;
    });
    ws.on('close', () => {
      if (this.#closed) return;
      this.#closed = true;
      this.emit('close', this.#error);
    });
  }

  send(frame: Uint8Array | FrameParts): boolean {
    if (this.#closed || this.#ws.readyState !== this.#ws.OPEN) return false;
    // One WebSocket message per frame: parts are joined (ws frames and masks a message as one).
    const bytes = frame instanceof Uint8Array ? frame : frame.length === 1 ? frame[0]! : Buffer.concat(frame);
    this.#ws.send(bytes, { binary: true }, () => {
      if (this.#wantDrain && this.#ws.bufferedAmount < WS_HIGH_WATER / 2) {
        this.#wantDrain = false;
        this.emit('drain');
      }
    });
    if (this.#ws.bufferedAmount >= WS_HIGH_WATER) {
      this.#wantDrain = true;
      return false;
    }
    return true;
  }

  pause(): void {
    this.#paused = true;
    this.#ws.pause();
  }

  resume(): void {
    this.#paused = false;
    while (!this.#paused && !this.#closed && this.#held.length > 0) this.emit('frame', this.#held.shift()!);
    if (!this.#paused) this.#ws.resume();
  }

  close(err?: Error): void {
    if (this.#closed) return;
    this.#error ??= err;
    if (err) this.#ws.terminate();
    else this.#ws.close(1000);
    setTimeout(() => this.#ws.terminate(), 2000).unref();
  }
}

/** `ws`, loaded when a WebSocket address is first used: most runs use TCP, and loading it costs
 *  every start of the endpoint and the host-agent tens of milliseconds. */
let wsLoaded: Promise<typeof import('ws')> | undefined;
const wsModule = () => (wsLoaded ??= import('ws'));

/** Connects to ws://HOST:PORT/PATH, or wss:// with `auth`, refusing an endpoint that is not pinned. */
export async function dialWs(
  host: string,
  port: number,
  path: string,
  auth?: TlsClientAuth,
): Promise<WsTransport> {
  const { default: WebSocket } = await wsModule();
  const h = host.includes(':') ? `[${host}]` : host;
  const url = `${auth ? 'wss' : 'ws'}://${h}:${port}${path}`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      maxPayload: MAX_FRAME_BYTES,
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
      perMessageDeflate: false,
      ...(auth ? { key: auth.identity.key, cert: auth.identity.cert, rejectUnauthorized: false } : {}),
    });
    let fp: string | undefined;
    ws.once('upgrade', (res) => {
      if (!auth) return;
      fp = peerFingerprintOf(res.socket as tls.TLSSocket);
      if (fp !== auth.pin) {
        ws.terminate();
        reject(
          new ProtocolError(
            ErrorCode.AUTH_REFUSED,
            `${url}: endpoint key ${fp ?? '(none)'} is not the pinned ${auth.pin}`,
          ),
        );
      }
    });
    ws.once('open', () => {
      ws.removeAllListeners('error');
      resolve(new WsTransport(ws, url, fp));
    });
    ws.once('unexpected-response', (_req, res) => {
      ws.terminate();
      reject(
        res.statusCode === 403
          ? new ProtocolError(ErrorCode.AUTH_REFUSED, `${url}: the endpoint does not allow this host's key`)
          : new Error(`${url}: HTTP ${res.statusCode} instead of a WebSocket`),
      );
    });
    ws.once('error', reject);
  });
}

/** Serves WebSocket sessions at `path`; with `auth`, over mutual TLS, refusing hosts not allowed
 *  (HTTP 403 before the upgrade). */
export async function listenWs(
  host: string,
  port: number,
  path: string,
  auth: TlsServerAuth | undefined,
  onTransport: (t: Transport) => void,
  onRefused: (remote: string, why: string) => void = () => {},
): Promise<Listener> {
  const { WebSocketServer } = await wsModule();
  const scheme = auth ? 'wss' : 'ws';
  const server = auth
    ? https.createServer({
        key: auth.identity.key,
        cert: auth.identity.cert,
        minVersion: 'TLSv1.3',
        requestCert: true,
        rejectUnauthorized: false,
      })
    : http.createServer();
  server.on('request', (_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' }).end('pcinet: WebSocket only\n');
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false });
  const remoteOf = (s: net.Socket) => `${scheme}://${s.remoteAddress}:${s.remotePort}`;
  server.on('upgrade', (req, socket, head) => {
    const s = socket as net.Socket;
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== path) {
      s.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    let fp: string | undefined;
    if (auth) {
      fp = peerFingerprintOf(s as tls.TLSSocket);
      if (!fp || !auth.allow.includes(fp)) {
        onRefused(remoteOf(s), fp ? `host key ${fp} is not allowed` : 'host presented no certificate');
        s.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n');
        return;
      }
    }
    wss.handleUpgrade(req, s, head, (ws) => onTransport(new WsTransport(ws, remoteOf(s), fp)));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address() as net.AddressInfo;
      const h = a.address.includes(':') ? `[${a.address}]` : a.address;
      resolve({
        address: `${scheme}://${h}:${a.port}${path}`,
        port: a.port,
        close: () =>
          new Promise<void>((res) => {
            for (const c of wss.clients) c.terminate();
            server.closeAllConnections?.();
            server.close(() => res());
          }),
      });
    });
  });
}
