/**
 * `moat serve --vault nats://…`: opening the JetStream vault with the
 * --vault-cache, --nats-* , --stream and --replicas options. Loaded only for
 * a nats:// vault, so no other command loads the NATS client.
 *
 * @module
 */

import type { AuditLog } from "../lib/audit.ts";
import { openNatsVault } from "../lib/vault/nats/vault.ts";
import type { OpenVaultOptions, Vault } from "../lib/vault/store.ts";

/** The serve options this file reads. */
export interface NatsServeValues {
  "vault-cache"?: string | undefined;
  "nats-creds"?: string | undefined;
  "nats-tls-ca"?: string | undefined;
  "nats-tls-cert"?: string | undefined;
  "nats-tls-key"?: string | undefined;
  stream: string;
  replicas: number;
}

/**
 * The function that opens the vault of `--vault nats://…`, in the shape of
 * `openVault` (the serve command passes it the same vault options).
 *
 * @param values The serve options (checked: --vault-cache is set).
 * @param audit Where publish failures of checkpoints go.
 * @returns The opener.
 */
export function natsVaultOpener(
  values: NatsServeValues,
  audit: AuditLog,
): (url: string, options: OpenVaultOptions) => Promise<Vault> {
  return async (url, options) => {
    const vault = await openNatsVault({
      ...options,
      url,
      cache: values["vault-cache"]!,
      creds: values["nats-creds"],
      tlsCa: values["nats-tls-ca"],
      tlsCert: values["nats-tls-cert"],
      tlsKey: values["nats-tls-key"],
      stream: values.stream,
      replicas: values.replicas,
      onPublishFailed: (e) => audit.write("vault_publish_failed", e),
    });
    audit.write("vault_stream", {
      stream: vault.stream,
      cache: vault.dir,
      created: vault.created,
    });
    return vault;
  };
}
