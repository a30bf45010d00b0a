/**
 * The options of `moat vault … nats://…` that say how to reach the stream,
 * apart from the code that reads it (cli/vault_nats.ts, which loads the NATS
 * client): `moat vault --help` lists them without loading it.
 *
 * @module
 */

import type { OptionTable } from "./options.ts";

/** How `moat vault` reaches a nats:// vault. */
export const NATS_READ_OPTIONS = {
  "nats-creds": {
    type: "file",
    placeholder: "FILE",
    description:
      "With nats://…: NATS credentials, a .creds file or one line user:password",
    group: "Options with a nats:// vault",
  },
  "nats-tls-ca": {
    type: "file",
    placeholder: "FILE",
    description: "With nats://…: TLS, trusting the CA in FILE (PEM)",
    group: "Options with a nats:// vault",
  },
  "nats-tls-cert": {
    type: "file",
    placeholder: "FILE",
    description: "With nats://…: TLS client certificate (PEM)",
    group: "Options with a nats:// vault",
  },
  "nats-tls-key": {
    type: "file",
    placeholder: "FILE",
    description: "With nats://…: TLS client key (PEM)",
    group: "Options with a nats:// vault",
  },
  stream: {
    type: "string",
    placeholder: "NAME",
    default: "MOAT",
    description: "With nats://…: the JetStream stream (subjects moat.<name>.>)",
    group: "Options with a nats:// vault",
  },
  cache: {
    type: "string",
    placeholder: "DIR",
    description:
      "With nats://…: read the stream into DIR and keep it (a DIR an earlier read filled is brought up to date), instead of a temporary directory",
    group: "Options with a nats:// vault",
  },
} as const satisfies OptionTable;
