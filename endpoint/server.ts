// The endpoint process: listens (TCP, TLS, ws, wss), runs the handshake, and serves the device
// models to one host session at a time. Another host that connects while the devices are held is
// refused with BUSY; when the session ends (orderly, by error, or after the grace period) the
// devices are detached and free for the next host.

import type net from 'node:net';
import type { Logger } from 'pino';
import type { DeviceModel } from '../devices/host-port.js';
import type { Address } from '../proto/address.js';
import { encodeControl } from '../proto/codec.js';
import type { Identity } from '../proto/identity.js';
import { ABI_VERSION } from '../proto/kernel-abi.js';
import { type Session, type SessionOptions, SessionServer } from '../proto/session.js';
import { type LinkHello, type Listener, listenTcp } from '../proto/tcp.js';
import { type Tap, TraceHub } from '../proto/trace.js';
import type { Transport } from '../proto/transport.js';
import { Capability, ErrorCode, OUR_CAPABILITIES, ProtocolError } from '../proto/wire.js';
import { listenWs } from '../proto/ws.js';
import { Faults, parseFaultSpec } from './faults.js';
import { KernelLink } from './link.js';
import { EndpointRuntime } from './runtime.js';

export interface EndpointServerOptions {
  models: readonly DeviceModel[];
  log: Logger;
  session?: SessionOptions;
  /** Outstanding DMA read tags per device. */
  maxDmaTags?: number;
  /** Faults to inject from the start (`pcinet endpoint --inject SPEC`; endpoint/faults.ts). A
   *  link-down among them waits until a host has attached the devices. Throws FaultSpecError. */
  inject?: readonly string[];
}

export interface ServerTls {
  identity: Identity;
  /** Host key fingerprints allowed to connect. */
  allow: readonly string[];
}

interface Active {
  session: Session;
  runtime: EndpointRuntime;
  /** performance.now() when it was opened. */
  openedAt: number;
}

export class EndpointServer {
  readonly #o: EndpointServerOptions;
  readonly #log: Logger;
  readonly #sessions: SessionServer;
  #listeners: Listener[] = [];
  #active: Active | undefined;
  /** Sessions served so far (for tests and logs). */
  served = 0;
  /** `pcinet trace` subscribes here (endpoint/control.ts); while one runs, the active session's
   *  runtime records every message, on the session and on kernel links. */
  readonly trace = new TraceHub((tap) => {
    this.#tap = tap;
    if (this.#active) this.#active.runtime.tap = tap;
  });
  #tap: Tap | undefined;
  /** `pcinet inject` (endpoint/control.ts): kept across sessions. */
  readonly faults: Faults;
  /** Until when (Date.now()) an injected link-down refuses sessions. */
  #linkDownUntil = 0;
  /** link-down specs given at start, injected once the first session has attached. */
  #deferred: string[] = [];

  constructor(options: EndpointServerOptions) {
    this.#o = options;
    this.#log = options.log;
    this.#sessions = new SessionServer(
      {
        ...options.session,
        log: options.log,
        agent: 'pcinet-endpoint',
        // Kernel links arrive on the TCP and TLS listeners (sealed on TLS); a host offers them
        // only there.
        capabilities: OUR_CAPABILITIES | Capability.CAP_KERNEL_LINK,
        admit: () =>
          Date.now() < this.#linkDownUntil
            ? new ProtocolError(
                ErrorCode.BUSY,
                `the devices' link is down (pcinet inject link-down) for ${Math.ceil((this.#linkDownUntil - Date.now()) / 1000)} s more`,
              )
            : this.#active
              ? new ProtocolError(
                  ErrorCode.BUSY,
                  `the devices are held by the session from ${this.#active.session.remote}`,
                )
              : undefined,
      },
      (s) => this.#serve(s),
    );
    this.faults = new Faults(options.models, {
      log: options.log,
      linkDown: (seconds, why) => this.#linkDown(seconds, why),
    });
    for (const spec of options.inject ?? []) {
      const targets = options.models.map((model, i) => ({ dev: i + 1, model }));
      if (parseFaultSpec(spec, targets).kind === 'link-down') this.#deferred.push(spec);
      else this.faults.add(spec);
    }
  }

  /** An injected link-down: the session ends as if the link had failed (the host takes its
   *  devices link down and redials) and new sessions are refused for `seconds`; the host's next
   *  try after that attaches the devices again and brings their links up. The protocol has no
   *  link state of its own per device: every device of the session goes down. */
  #linkDown(seconds: number, why: string): void {
    this.#linkDownUntil = Date.now() + seconds * 1000;
    const a = this.#active;
    this.#log.warn(
      { seconds, why, session: !!a },
      'link down: session ended, sessions refused until it is up',
    );
    if (a) void a.session.close(new ProtocolError(ErrorCode.LINK_LOST, `link down for ${seconds} s: ${why}`));
    setTimeout(() => this.#log.warn({ seconds }, 'link up: sessions admitted again'), seconds * 1000).unref();
  }

  /** The session being served, if any. */
  get active(): Active | undefined {
    return this.#active;
  }

  /** The addresses it listens on. */
  get addresses(): string[] {
    return this.#listeners.map((l) => l.address);
  }

  /** Takes a connection from any transport (tests use the loop transport). */
  accept(t: Transport): void {
    this.#sessions.accept(t);
  }

  /** Listens on `addr` (scheme ws/wss: WebSocket, else TCP); TLS when `tls` is given. Resolves
   *  with the address it listens on. */
  async listen(addr: Address, tls?: ServerTls): Promise<string> {
    const refused = (remote: string, why: string) => this.#log.warn({ remote, why }, 'connection refused');
    const wantsTls = addr.scheme === 'tls' || addr.scheme === 'wss';
    if (wantsTls && !tls) throw new Error(`${addr.scheme}:// needs an identity`);
    const l =
      addr.scheme === 'ws' || addr.scheme === 'wss'
        ? await listenWs(addr.host, addr.port, addr.path, tls, (t) => this.accept(t), refused)
        : await listenTcp(
            addr.host,
            addr.port,
            tls,
            (t) => this.accept(t),
            refused,
            (why) => encodeControl(0, [{ error: { code: ErrorCode.AUTH_REFUSED, message: why } }]),
            (socket, hello) => this.#link(socket, hello),
          );
    this.#listeners.push(l);
    return l.address;
  }

  /** A connection pcinet.ko opened for a device of the active session (docs/KERNEL-ABI.md). */
  #link(socket: net.Socket, hello: LinkHello): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const refuse = (why: string) => {
      this.#log.warn({ remote, why }, 'kernel link refused');
      socket.destroy();
    };
    if (hello.abiVersion !== ABI_VERSION) {
      refuse(`record format version ${hello.abiVersion}, we speak ${ABI_VERSION}`);
      return;
    }
    const link = new KernelLink(socket, hello.reads);
    if (!this.#active?.runtime.bindLink(hello.token, link)) refuse('no device is waiting for it');
  }

  #serve(session: Session): void {
    const runtime = new EndpointRuntime(session, this.#o.models, {
      log: this.#log,
      maxDmaTags: this.#o.maxDmaTags,
      faults: this.faults,
      links: true,
      // Authenticated sessions are TLS: their links are sealed.
      sealLinks: session.peerFingerprint !== undefined,
    });
    runtime.tap = this.#tap;
    this.#active = { session, runtime, openedAt: performance.now() };
    this.served++;
    session.once('close', (err?: Error) => {
      if (this.#active?.session === session) this.#active = undefined;
      this.#log.info({ err: err?.message }, 'session closed; devices free');
    });
    runtime.start().then(
      (outcomes) => {
        for (const o of outcomes) {
          if (o.code === ErrorCode.OK)
            this.#log.info({ dev: o.dev, model: o.model, address: o.address }, 'device attached');
          else
            this.#log.warn(
              { dev: o.dev, model: o.model, code: ErrorCode[o.code], why: o.message },
              'attach failed',
            );
        }
        for (const spec of this.#deferred.splice(0)) this.faults.add(spec);
      },
      (e: Error) => this.#log.warn({ err: e.message }, 'session ended before every device was attached'),
    );
  }

  /** Detaches the devices (Detach to the host), closes the session and the listeners. */
  async close(): Promise<void> {
    this.faults.close();
    const a = this.#active;
    if (a) {
      a.runtime.close();
      await a.session.close();
    }
    await this.#sessions.close();
    await Promise.all(this.#listeners.map((l) => l.close()));
    this.#listeners = [];
  }
}
