/**
 * The command-line surface of TLS and client authentication: the option
 * tables serve and the client commands add, the environment they read, and
 * turning parsed values into {@linkcode ServerOptions} / {@linkcode ClientOptions}
 * fields. Nothing here prints or exits.
 *
 * @module
 */

import type { ServerTlsOptions } from "../lib/net/types.ts";
import type { ServerAuth } from "../lib/server/mod.ts";
import {
  type ClientTlsConfig,
  loadClientFiles,
  loadServerTls,
} from "../lib/tls.ts";
import { loadTokens, type Token } from "../lib/auth.ts";
import { parseFingerprint } from "../lib/cert.ts";
import { knownHostsFile } from "../lib/known_hosts.ts";
import { UsageError } from "../lib/errors.ts";
import type { EnvSpec, OptionTable } from "./options.ts";

const SECURITY = "Security (see docs/SECURITY.md)";

/** Options that `moat serve` adds. */
export const SERVE_SECURITY_OPTIONS = {
  "tls-cert": {
    type: "file",
    placeholder: "F",
    description: "Speak TLS 1.3 only, with this PEM certificate (chain)",
    group: SECURITY,
  },
  "tls-key": {
    type: "file",
    placeholder: "F",
    description: "... and this PEM private key",
    group: SECURITY,
  },
  "client-ca": {
    type: "file",
    placeholder: "F",
    description: "Require a client certificate issued by a CA in F",
    group: SECURITY,
  },
  "allow-cert": {
    type: "string",
    placeholder: "FP",
    multiple: true,
    description:
      "Require a client certificate; accept this one (sha256:…); combines with --client-ca",
    group: SECURITY,
  },
  "token-file": {
    type: "file",
    placeholder: "F",
    description:
      'Require a token from F ("NAME SECRET" lines), else from $MOAT_TOKEN; proved by challenge–response, never sent. A token turns plain-text mode off',
    group: SECURITY,
  },
} as const satisfies OptionTable;

/** Environment variables behind {@linkcode SERVE_SECURITY_OPTIONS}. */
export const SERVE_SECURITY_ENV: readonly EnvSpec[] = [
  {
    name: "MOAT_TOKEN",
    description:
      'Tokens to require ("NAME SECRET" lines) when there is no --token-file',
  },
];

/** Options that client commands (get, chat, ship) add. */
export const CLIENT_SECURITY_OPTIONS = {
  tls: {
    type: "boolean",
    description:
      "Connect with TLS 1.3. The server is verified with --ca, or --pin, or else trusted on first use (remembered in known_hosts in $MOAT_CONFIG_DIR, $XDG_CONFIG_HOME/moat or ~/.config/moat)",
    group: SECURITY,
  },
  ca: {
    type: "file",
    placeholder: "F",
    description: "Verify the server's chain and name against the CAs in F",
    group: SECURITY,
  },
  pin: {
    type: "string",
    placeholder: "FP",
    multiple: true,
    description:
      "Accept only this certificate fingerprint (sha256:…, colons ok)",
    group: SECURITY,
  },
  cert: {
    type: "file",
    placeholder: "F",
    description: "Present this client certificate (with --key)",
    group: SECURITY,
  },
  key: {
    type: "file",
    placeholder: "F",
    description: "... and this private key",
    group: SECURITY,
  },
  "token-file": {
    type: "file",
    placeholder: "F",
    description:
      "Answer the server's token challenge with the token in F (else $MOAT_TOKEN; never on the command line)",
    group: SECURITY,
  },
} as const satisfies OptionTable;

/** Environment variables behind {@linkcode CLIENT_SECURITY_OPTIONS}. */
export const CLIENT_SECURITY_ENV: readonly EnvSpec[] = [
  {
    name: "MOAT_TOKEN",
    description: 'The token ("NAME SECRET") when there is no --token-file',
  },
  {
    name: "MOAT_CONFIG_DIR",
    description:
      "Where known_hosts (servers trusted on first use with --tls) is kept",
  },
  {
    name: "XDG_CONFIG_HOME",
    description: "Without $MOAT_CONFIG_DIR: known_hosts is in its moat folder",
  },
  {
    name: "HOME",
    description: "Without either: known_hosts is in ~/.config/moat",
  },
  {
    name: "USERPROFILE",
    description: "Stands in for $HOME where that is unset (Windows)",
  },
];

/** Parsed values of {@linkcode SERVE_SECURITY_OPTIONS}. */
export interface ServeSecurityValues {
  "tls-cert"?: string | undefined;
  "tls-key"?: string | undefined;
  "client-ca"?: string | undefined;
  "allow-cert"?: string[] | undefined;
  "token-file"?: string | undefined;
}

/** Parsed values of {@linkcode CLIENT_SECURITY_OPTIONS}. */
export interface ClientSecurityValues {
  tls?: boolean | undefined;
  ca?: string | undefined;
  pin?: string[] | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  "token-file"?: string | undefined;
}

/**
 * Builds a server's TLS and authentication settings.
 *
 * @param values Parsed options.
 * @param env The environment (for MOAT_TOKEN).
 * @returns Fields for the Server's options (empty without any of the options).
 * @throws {UsageError} On inconsistent options or unreadable files.
 */
export function serverSecurity(
  values: ServeSecurityValues,
  env: Record<string, string | undefined>,
): { tls?: ServerTlsOptions; auth?: ServerAuth } {
  const certFile = values["tls-cert"];
  const keyFile = values["tls-key"];
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  const allowed = new Set(
    (values["allow-cert"] ?? []).map((fp) =>
      parseFingerprint(fp, "--allow-cert")
    ),
  );
  const wantsCerts = values["client-ca"] !== undefined || allowed.size > 0;
  if (wantsCerts && certFile === undefined) {
    throw new UsageError(
      "--client-ca and --allow-cert need TLS: add --tls-cert and --tls-key",
    );
  }
  const out: { tls?: ServerTlsOptions; auth?: ServerAuth } = {};
  let binding = "";
  if (certFile !== undefined && keyFile !== undefined) {
    const loaded = loadServerTls({
      cert: certFile,
      key: keyFile,
      clientCa: values["client-ca"],
    });
    out.tls = loaded.tls;
    binding = loaded.fingerprint;
  }
  const tokens = loadTokens(values["token-file"], env);
  if (wantsCerts || tokens !== undefined) {
    out.auth = {
      binding,
      ...(wantsCerts && {
        certs: {
          allowed,
          ...(out.tls?.clientCa !== undefined &&
            { clientCa: out.tls.clientCa }),
        },
      }),
      ...(tokens !== undefined && { tokens }),
    };
  }
  return out;
}

/**
 * Builds a client's TLS and token settings.
 *
 * @param values Parsed options.
 * @param options The environment, and who hears about a newly trusted server.
 * @returns Fields for ClientOptions (empty without any of the options).
 * @throws {UsageError} On inconsistent options or unreadable files.
 */
export function clientSecurity(
  values: ClientSecurityValues,
  options: {
    env: Record<string, string | undefined>;
    onNewHost?: (host: string, fingerprint: string, file: string) => void;
  },
): { tls?: ClientTlsConfig; token?: Token } {
  const pins = (values.pin ?? []).map((fp) => parseFingerprint(fp, "--pin"));
  const tlsOnly = values.ca !== undefined || pins.length > 0 ||
    values.cert !== undefined || values.key !== undefined;
  if (tlsOnly && values.tls !== true) {
    throw new UsageError("--ca, --pin, --cert and --key need --tls");
  }
  if (values.ca !== undefined && pins.length > 0) {
    throw new UsageError("Use either --ca or --pin, not both");
  }
  const out: { tls?: ClientTlsConfig; token?: Token } = {};
  if (values.tls === true) {
    const files = loadClientFiles({
      ca: values.ca,
      cert: values.cert,
      key: values.key,
    });
    out.tls = {
      trust: files.ca !== undefined
        ? { kind: "ca", ca: files.ca }
        : pins.length > 0
        ? { kind: "pin", pins }
        : { kind: "tofu", file: knownHostsFile(options.env) },
      ...(files.cert !== undefined && { cert: files.cert }),
      ...(files.key !== undefined && { key: files.key }),
      ...(options.onNewHost && { onNewHost: options.onNewHost }),
    };
  }
  const tokens = loadTokens(values["token-file"], options.env);
  if (tokens !== undefined) {
    if (tokens.length > 1) {
      throw new UsageError("A client token file holds one token");
    }
    out.token = tokens[0]!;
  }
  return out;
}
