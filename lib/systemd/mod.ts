/**
 * systemd units for moat, each as least-privileged as the flags allow:
 *
 * - `serve.ts`: {@linkcode renderSystemdUnit} for `moat serve`, with the
 *   kernel's address filter computed from the allowlist
 *   ({@linkcode computeIpAddressAllow});
 * - `ship.ts`: {@linkcode renderShipUnit} for `moat ship`;
 * - `_quote.ts`: {@linkcode quoteSystemdArg} and the checks on paths a unit
 *   cannot name; `_common.ts`: what both units share.
 *
 * Everything here is pure: no file, network or process access. The commands
 * (`cli/serve.ts`, `cli/ship.ts`) gather the inputs and print the result.
 * Why each setting is there is in docs/DEPLOY.md.
 *
 * @module
 */

export type { ServeFlag, SystemdLauncher } from "./_common.ts";
export { quoteSystemdArg } from "./_quote.ts";
export {
  type AllowlistRules,
  computeIpAddressAllow,
  type IpAddressAllow,
  type IpAddressAllowOptions,
  renderSystemdUnit,
  type SystemdUnitOptions,
} from "./serve.ts";
export {
  renderShipUnit,
  type ShipUnitInput,
  type ShipUnitOptions,
} from "./ship.ts";
