/**
 * Certificates: SHA-256 fingerprints, reading PEM, checking an end-entity
 * certificate's dates and CA flag, and making a self-signed certificate for
 * users without a CA.
 *
 * Parsing uses `node:crypto`'s `X509Certificate` (both runtimes have it);
 * generating uses `@peculiar/x509` over WebCrypto, loaded only when a
 * certificate is made, so no other command pays for it. No ASN.1 is written
 * by hand here.
 *
 * @module
 */

import { createHash, X509Certificate } from "node:crypto";
import { UsageError } from "./errors.ts";

/** A key and certificate made by {@linkcode createSelfSignedCert}. */
export interface GeneratedCert {
  /** PEM certificate. */
  cert: string;
  /** PEM PKCS#8 private key (ECDSA P-256). */
  key: string;
  /** `sha256:<64 hex>` of the certificate's DER. */
  fingerprint: string;
}

/** Default validity of a new certificate: 825 days, the CA/Browser Forum's old limit. */
export const DEFAULT_CERT_DAYS = 825;

/** Options for {@linkcode createSelfSignedCert}. */
export interface SelfSignedOptions {
  /** DNS names and IP addresses for the subjectAltName; the first is the CN. */
  names: readonly string[];
  /** Validity in days from now. @default {DEFAULT_CERT_DAYS} */
  days?: number;
}

/**
 * Computes a certificate's fingerprint.
 *
 * @param der The certificate, DER.
 * @returns `sha256:` and 64 lowercase hex digits.
 */
export function fingerprint(der: Uint8Array): string {
  return "sha256:" + createHash("sha256").update(der).digest("hex");
}

/**
 * Shows a fingerprint the way `openssl x509 -fingerprint -sha256` does.
 *
 * @param fp `sha256:<64 hex>`.
 * @returns e.g. `AB:CD:…` (uppercase, colon-separated).
 */
export function colonFingerprint(fp: string): string {
  return fp.replace(/^sha256:/, "").toUpperCase().match(/../g)?.join(":") ?? "";
}

/**
 * Parses a fingerprint as a user may type it: `sha256:<64 hex>`, with or
 * without colons between byte pairs, any case; also the bare hex and
 * openssl's `sha256 Fingerprint=AB:CD:…` / `SHA256 Fingerprint=…` forms.
 *
 * @param text The fingerprint.
 * @param option The option it came from, for the error, e.g. "--pin".
 * @returns `sha256:<64 lowercase hex>`.
 * @throws {UsageError} When it is not a SHA-256 fingerprint.
 */
export function parseFingerprint(text: string, option = "fingerprint"): string {
  const body = text.trim().replace(/^sha256(:| fingerprint=)/i, "");
  const hex = body.replaceAll(":", "").toLowerCase();
  const pairs = body.includes(":")
    ? body.split(":").every((p) => p.length === 2)
    : true;
  if (!/^[0-9a-f]{64}$/.test(hex) || !pairs) {
    throw new UsageError(
      `Invalid ${option} "${text}": expected sha256:<64 hex digits> (colons allowed)`,
    );
  }
  return `sha256:${hex}`;
}

/**
 * Reads every certificate of a PEM bundle.
 *
 * @param pem PEM text.
 * @param what Where it came from, for the error, e.g. `--ca "ca.pem"`.
 * @returns The certificates, in order.
 * @throws {UsageError} When there is none or one does not parse.
 */
export function readPemCertificates(
  pem: string,
  what: string,
): X509Certificate[] {
  const blocks = pem.match(
    /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g,
  ) ?? [];
  if (blocks.length === 0) {
    throw new UsageError(`Cannot use ${what}: no PEM certificate in it`);
  }
  return blocks.map((block) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new UsageError(
        `Cannot use ${what}: a certificate does not parse (${
          (err as Error).message
        })`,
      );
    }
  });
}

/**
 * Checks what every peer certificate must satisfy whatever the trust mode:
 * within its validity dates, and not a CA certificate (`CA:TRUE` belongs on
 * issuers, never on a server or client).
 *
 * @param der The end-entity certificate, DER.
 * @param now The time to check against.
 * @returns undefined when acceptable, else a reason such as
 * `certificate expired on 2024-01-02T00:00:00.000Z`.
 */
export function endEntityProblem(
  der: Uint8Array,
  now: Date = new Date(),
): string | undefined {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch {
    return "certificate does not parse";
  }
  if (cert.ca) {
    return "certificate is a CA certificate (CA:TRUE), not an end-entity certificate";
  }
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) {
    return "certificate has unreadable validity dates";
  }
  if (now.getTime() > notAfter) {
    return `certificate expired on ${new Date(notAfter).toISOString()}`;
  }
  if (now.getTime() < notBefore) {
    return `certificate is not valid before ${
      new Date(notBefore).toISOString()
    }`;
  }
  return undefined;
}

/**
 * Checks that a certificate names the host: an IP address against its IP
 * SANs, a DNS name against its DNS SANs (wildcards as RFC 6125 allows).
 *
 * @param der The certificate, DER.
 * @param host The name or address the client dialled.
 * @returns true when the certificate is for `host`.
 */
export function certificateMatchesHost(der: Uint8Array, host: string): boolean {
  const cert = new X509Certificate(der);
  if (isIpAddress(host)) return cert.checkIP(host) !== undefined;
  return cert.checkHost(host) !== undefined;
}

function isIpAddress(name: string): boolean {
  return name.includes(":") || /^\d{1,3}(\.\d{1,3}){3}$/.test(name);
}

const DNS_NAME =
  /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/**
 * Makes an ECDSA P-256 key and a self-signed end-entity certificate
 * (`CA:FALSE`, key usage digitalSignature, extended key usage serverAuth and
 * clientAuth, one SAN per name). Usable as a server or a client certificate.
 *
 * @param options Names and validity.
 * @returns PEM certificate, PEM key and the fingerprint.
 * @throws {UsageError} On a name that is neither an IP address nor a DNS name.
 */
export async function createSelfSignedCert(
  options: SelfSignedOptions,
): Promise<GeneratedCert> {
  const names = options.names.length > 0
    ? [...options.names]
    : ["localhost", "127.0.0.1", "::1"];
  const sans: { type: "ip" | "dns"; value: string }[] = names.map((name) => {
    if (isIpAddress(name)) {
      try {
        new URL(`http://${name.includes(":") ? `[${name}]` : name}/`);
      } catch {
        throw new UsageError(`Invalid --name "${name}": not an IP address`);
      }
      return { type: "ip", value: name };
    }
    if (!DNS_NAME.test(name) || name.length > 253) {
      throw new UsageError(
        `Invalid --name "${name}": expected a DNS name or an IP address`,
      );
    }
    return { type: "dns", value: name.toLowerCase() };
  });
  const days = options.days ?? DEFAULT_CERT_DAYS;
  // tsyringe, under @peculiar/x509, needs the Reflect metadata API first.
  await import("reflect-metadata");
  const x509 = await import("@peculiar/x509");
  x509.cryptoProvider.set(globalThis.crypto);
  const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await crypto.subtle.generateKey(algorithm, true, [
    "sign",
    "verify",
  ]);
  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0] = serial[0]! & 0x7f; // Positive, as RFC 5280 requires.
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial.toHex(),
    name: [{ CN: [names[0]!] }, { O: ["moat"] }],
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + days * 86_400_000),
    signingAlgorithm: algorithm,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension(sans),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = new Uint8Array(
    await crypto.subtle.exportKey("pkcs8", keys.privateKey),
  );
  return {
    cert: cert.toString("pem") + "\n",
    key: toPem(pkcs8, "PRIVATE KEY"),
    fingerprint: fingerprint(new Uint8Array(cert.rawData)),
  };
}

function toPem(der: Uint8Array, label: string): string {
  let binary = "";
  for (const b of der) binary += String.fromCharCode(b);
  const body = btoa(binary).match(/.{1,64}/g)?.join("\n") ?? "";
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}
