// A machine's persistent identity: an ECDSA P-256 key pair and a self-signed certificate in its
// config directory, created on first use. Peers are pinned by the SHA-256 of the public key
// (SubjectPublicKeyInfo, DER), printed as "sha256:<hex>".
import { createHash, type KeyObject, webcrypto, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

export interface Identity {
  dir: string;
  /** PEM */
  key: string;
  /** PEM */
  cert: string;
  fingerprint: string;
}

const KEY_FILE = 'key.pem';
const CERT_FILE = 'cert.pem';
const VALID_YEARS = 30;

export function fingerprintOf(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

export function certFingerprint(certPem: string | Buffer): string {
  return fingerprintOf(new X509Certificate(certPem).publicKey);
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

async function create(): Promise<{ key: string; cert: string }> {
  // Loaded only to make a certificate (once per machine): it takes a quarter of a second, which
  // every start of the endpoint and the host-agent would otherwise pay (the edit loop, restarts).
  await import('reflect-metadata'); // @peculiar/x509 needs it before it loads
  const x509 = await import('@peculiar/x509');
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = new Date();
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex'),
      name: `CN=pcinet ${hostname()}`,
      notBefore: new Date(now.getTime() - 86_400_000),
      notAfter: new Date(now.getFullYear() + VALID_YEARS, now.getMonth(), now.getDate()),
      keys,
      signingAlgorithm: alg,
    },
    webcrypto as unknown as Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[1],
  );
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { key: pem('PRIVATE KEY', pkcs8), cert: cert.toString('pem') };
}

function writeAtomically(path: string, data: string, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode });
  renameSync(tmp, path);
}

/** Loads the identity in `dir`, creating the directory (0700), key (0600) and certificate first if
 *  they do not exist. A directory with only one of the two files is an error, not overwritten. */
export async function loadOrCreateIdentity(dir: string): Promise<Identity> {
  const keyPath = join(dir, KEY_FILE);
  const certPath = join(dir, CERT_FILE);
  const hasKey = existsSync(keyPath);
  const hasCert = existsSync(certPath);
  if (hasKey !== hasCert) {
    throw new Error(
      `identity ${dir}: ${hasKey ? CERT_FILE : KEY_FILE} is missing (remove the directory to start over)`,
    );
  }
  if (!hasKey) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    const made = await create();
    writeAtomically(keyPath, made.key, 0o600);
    writeAtomically(certPath, made.cert, 0o644);
  }
  const key = readFileSync(keyPath, 'utf8');
  const cert = readFileSync(certPath, 'utf8');
  let fingerprint: string;
  try {
    fingerprint = certFingerprint(cert);
  } catch (e) {
    throw new Error(`identity ${dir}: ${CERT_FILE} is not a certificate: ${(e as Error).message}`);
  }
  return { dir, key, cert, fingerprint };
}
