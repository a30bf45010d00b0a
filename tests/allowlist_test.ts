import { test } from "node:test";
import assert from "node:assert/strict";
import { BlockList, isIP } from "node:net";
import {
  type Allowlist,
  type AllowlistOptions,
  type Cidr,
  compileAllowlist,
  formatCidr,
  parseIp,
  parseRule,
  splitRules,
} from "../lib/allowlist.ts";
import { UsageError } from "../lib/errors.ts";

/** One peer row: the peer text and whether it may connect. */
interface PeerRow {
  addr: string;
  expected: boolean;
}

/** Runs every row against `list`; returns the rows that got the wrong verdict. */
function wrongVerdicts(list: Allowlist, rows: readonly PeerRow[]): string[] {
  return rows
    .filter((row) => list.check(row.addr) !== row.expected)
    .map((row) => `${JSON.stringify(row.addr)} expected ${row.expected}`);
}

/** The error `fn` throws, asserting it is a one-line UsageError. */
function usageError(fn: () => unknown): UsageError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof UsageError, `expected UsageError, got ${caught}`);
  assert.equal(caught.code, "ERR_USAGE");
  assert.equal(caught.exitCode, 2);
  assert.match(caught.message, /^Invalid rule: "/);
  assert.doesNotMatch(caught.message, /[\n\r]/);
  assert.doesNotMatch(caught.message, /\.$/);
  return caught;
}

// ---------------------------------------------------------------- parseIp

test("parseIp parses canonical IPv4 and RFC 4291 IPv6 forms", () => {
  const rows: { text: string; family: 4 | 6; hex: string }[] = [
    { text: "0.0.0.0", family: 4, hex: "00000000" },
    { text: "10.0.0.5", family: 4, hex: "0a000005" },
    { text: "255.255.255.255", family: 4, hex: "ffffffff" },
    { text: "192.168.100.200", family: 4, hex: "c0a864c8" },
    { text: "::", family: 6, hex: "0".repeat(32) },
    { text: "::1", family: 6, hex: "0".repeat(31) + "1" },
    { text: "1::", family: 6, hex: "0001" + "0".repeat(28) },
    { text: "0:0:0:0:0:0:0:1", family: 6, hex: "0".repeat(31) + "1" },
    {
      text: "0000:0000:0000:0000:0000:0000:0000:0001",
      family: 6,
      hex: "0".repeat(31) + "1",
    },
    {
      text: "2001:DB8::Ab:1",
      family: 6,
      hex: "20010db8000000000000000000ab0001",
    },
    {
      text: "2001:db8:0:0:1::1",
      family: 6,
      hex: "20010db8000000000001000000000001",
    },
    {
      text: "1:2:3:4:5:6:7::",
      family: 6,
      hex: "00010002000300040005000600070000",
    },
    {
      text: "::2:3:4:5:6:7:8",
      family: 6,
      hex: "00000002000300040005000600070008",
    },
    {
      text: "1:2:3:4:5:6:7:8",
      family: 6,
      hex: "00010002000300040005000600070008",
    },
    {
      text: "::ffff:1.2.3.4",
      family: 6,
      hex: "00000000000000000000ffff01020304",
    },
    {
      text: "::FFFF:1.2.3.4",
      family: 6,
      hex: "00000000000000000000ffff01020304",
    },
    {
      text: "64:ff9b::1.2.3.4",
      family: 6,
      hex: "0064ff9b000000000000000001020304",
    },
    {
      text: "::1.2.3.4",
      family: 6,
      hex: "00000000000000000000000001020304",
    },
    {
      text: "1:2:3:4:5:6:1.2.3.4",
      family: 6,
      hex: "00010002000300040005000601020304",
    },
    {
      text: "1:2:3:4:5::1.2.3.4",
      family: 6,
      hex: "00010002000300040005000001020304",
    },
    {
      text: "fe80::1",
      family: 6,
      hex: "fe800000000000000000000000000001",
    },
  ];
  for (const row of rows) {
    const ip = parseIp(row.text);
    assert.ok(ip !== null, row.text);
    assert.equal(ip.family, row.family, row.text);
    assert.equal(ip.bytes.toHex(), row.hex, row.text);
  }
});

test("parseIp returns null for non-canonical or malformed text", () => {
  const rows = [
    "",
    "010.0.0.5",
    "127.1",
    "127.0.1",
    "0x7f.0.0.1",
    "2130706433",
    "1.2.3.4.",
    " 1.2.3.4",
    "1.2.3.4 ",
    "1.2.3.256",
    "+1.2.3.4",
    "1.2.3.-4",
    "1..2.3",
    "1.2.3.4.5",
    "1.2.3.0004",
    "１２７.0.0.1",
    "localhost",
    "[::1]",
    "::1%lo",
    "fe80::1%eth0",
    "10.0.0.0/8",
    ":",
    ":::",
    "::1::",
    "1::2::3",
    ":1::",
    "1::2:",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "12345::",
    "::g",
    "::ffff:127.1",
    "::ffff:1.2.3.04",
    "::ffff:1.2.3.4.",
    "1.2.3.4::",
    "1:2:3:4:5:6:7:1.2.3.4",
    "::1.2.3.4:1",
  ];
  const accepted = rows.filter((text) => parseIp(text) !== null);
  assert.deepEqual(accepted, []);
});

// --------------------------------------------------------------- parseRule

test("parseRule accepts addresses and CIDRs and formatCidr prints them canonically", () => {
  const rows: { rule: string; expected: string }[] = [
    { rule: "10.0.0.5", expected: "10.0.0.5/32" },
    { rule: "10.0.0.0/8", expected: "10.0.0.0/8" },
    { rule: "0.0.0.0/0", expected: "0.0.0.0/0" },
    { rule: "0.0.0.0", expected: "0.0.0.0/32" },
    { rule: "128.0.0.0/1", expected: "128.0.0.0/1" },
    { rule: "192.168.1.4/31", expected: "192.168.1.4/31" },
    { rule: "255.255.255.255/32", expected: "255.255.255.255/32" },
    { rule: "::", expected: "::/128" },
    { rule: "::/0", expected: "::/0" },
    { rule: "::1", expected: "::1/128" },
    { rule: "2001:DB8::/32", expected: "2001:db8::/32" },
    { rule: "2001:0db8:0000:0000::/64", expected: "2001:db8::/64" },
    { rule: "fe80::/10", expected: "fe80::/10" },
    { rule: "0:0:0:0:0:0:0:1", expected: "::1/128" },
    { rule: "1:2:3:4:5:6:7:8", expected: "1:2:3:4:5:6:7:8/128" },
    // RFC 5952: longest run compressed, first on a tie, never a single group.
    { rule: "2001:0:0:1:0:0:0:1", expected: "2001:0:0:1::1/128" },
    { rule: "2001:db8:0:0:1:0:0:1", expected: "2001:db8::1:0:0:1/128" },
    { rule: "2001:db8:0:1:1:1:1:1", expected: "2001:db8:0:1:1:1:1:1/128" },
    { rule: "1:0:0:0:0:0:0:0", expected: "1::/128" },
    { rule: "0:0:0:0:0:0:0:0/0", expected: "::/0" },
    // IPv4-mapped rules become IPv4 rules.
    { rule: "::ffff:10.0.0.5", expected: "10.0.0.5/32" },
    { rule: "::ffff:10.0.0.0/104", expected: "10.0.0.0/8" },
    { rule: "::FFFF:7F00:1", expected: "127.0.0.1/32" },
    { rule: "::ffff:0:0/96", expected: "0.0.0.0/0" },
    { rule: "::ffff:0.0.0.0/96", expected: "0.0.0.0/0" },
    { rule: "0:0:0:0:0:ffff:192.168.1.0/120", expected: "192.168.1.0/24" },
    // IPv4-compatible and NAT64 stay IPv6.
    { rule: "::1.2.3.4", expected: "::102:304/128" },
    { rule: "64:ff9b::1.2.3.4", expected: "64:ff9b::102:304/128" },
    { rule: "64:ff9b::/96", expected: "64:ff9b::/96" },
  ];
  for (const row of rows) {
    const cidr = parseRule(row.rule);
    assert.equal(formatCidr(cidr), row.expected, row.rule);
    // The canonical text parses back to the same network.
    const again = parseRule(row.expected);
    assert.equal(again.family, cidr.family, row.rule);
    assert.equal(again.prefix, cidr.prefix, row.rule);
    assert.equal(again.bytes.toHex(), cidr.bytes.toHex(), row.rule);
  }
});

test("parseRule returns the family, network bytes and prefix", () => {
  assert.deepEqual(parseRule("192.168.1.0/24"), {
    family: 4,
    bytes: new Uint8Array([192, 168, 1, 0]),
    prefix: 24,
  });
  const v6 = parseRule("2001:db8::/32");
  assert.equal(v6.family, 6);
  assert.equal(v6.prefix, 32);
  assert.equal(v6.bytes.toHex(), "20010db8" + "0".repeat(24));
});

/** Rules that must stop start-up, with a fragment of the expected reason. */
const REJECTED_RULES: { rule: string; reason: RegExp; shown?: string }[] = [
  { rule: "010.0.0.5", reason: /is not a canonical IPv4 address/ },
  { rule: "127.1", reason: /is not a canonical IPv4 address/ },
  { rule: "0x7f.0.0.1", reason: /is not a canonical IPv4 address/ },
  { rule: "2130706433", reason: /is not a canonical IPv4 address/ },
  { rule: "1.2.3.4.", reason: /is not a canonical IPv4 address/ },
  { rule: " 1.2.3.4", reason: /contains whitespace/ },
  { rule: "1.2.3.4 ", reason: /contains whitespace/ },
  { rule: "1.2.3.256", reason: /is not a canonical IPv4 address/ },
  { rule: "+1.2.3.4", reason: /is not a canonical IPv4 address/ },
  { rule: "-1.2.3.4", reason: /is not a canonical IPv4 address/ },
  { rule: "1.2.3", reason: /is not a canonical IPv4 address/ },
  { rule: "1.2.3.4.5", reason: /is not a canonical IPv4 address/ },
  { rule: "1.2.3.04", reason: /is not a canonical IPv4 address/ },
  { rule: "0.0.0.00", reason: /is not a canonical IPv4 address/ },
  { rule: "0", reason: /is not a canonical IPv4 address/ },
  { rule: "10.0.0.*", reason: /is not a canonical IPv4 address/ },
  { rule: "10.0.0.0-10.0.0.255", reason: /is not a canonical IPv4 address/ },
  { rule: "10.0.0.0/33", reason: /prefix length 33; IPv4 allows 0 to 32/ },
  { rule: "::/129", reason: /prefix length 129; IPv6 allows 0 to 128/ },
  {
    rule: "::ffff:1.2.3.4/129",
    reason: /prefix length 129; IPv6 allows 0 to 128/,
  },
  { rule: "10.0.0.0/-1", reason: /invalid prefix length "-1"/ },
  { rule: "10.0.0.0/08", reason: /non-canonical prefix length "08"/ },
  { rule: "10.0.0.0/00", reason: /non-canonical prefix length "00"/ },
  { rule: "10.0.0.0/", reason: /invalid prefix length ""/ },
  { rule: "10.0.0.0/+8", reason: /invalid prefix length "\+8"/ },
  { rule: "10.0.0.0/0x8", reason: /invalid prefix length "0x8"/ },
  { rule: "10.0.0.0/8.0", reason: /invalid prefix length "8\.0"/ },
  { rule: "10.0.0.0/24/8", reason: /invalid prefix length "24\/8"/ },
  { rule: "10.0.0.0/1000", reason: /invalid prefix length "1000"/ },
  { rule: "::/", reason: /invalid prefix length ""/ },
  { rule: "/24", reason: /has no address before the prefix length/ },
  {
    rule: "10.0.0.5/24",
    reason: /has host bits set; did you mean "10\.0\.0\.0\/24"/,
  },
  {
    rule: "192.168.1.1/0",
    reason: /has host bits set; did you mean "0\.0\.0\.0\/0"/,
  },
  {
    rule: "2001:db8::1/32",
    reason: /has host bits set; did you mean "2001:db8::\/32"/,
  },
  { rule: "::1/127", reason: /has host bits set; did you mean "::\/127"/ },
  {
    rule: "::ffff:10.0.0.5/120",
    reason: /has host bits set; did you mean "::ffff:10\.0\.0\.0\/120"/,
  },
  { rule: "fe80::1%eth0", reason: /has a zone id/ },
  { rule: "fe80::1%25eth0", reason: /has a zone id/ },
  { rule: "::1%", reason: /has a zone id/ },
  { rule: "", reason: /is empty/ },
  { rule: "localhost", reason: /is a hostname/ },
  { rule: "example.com", reason: /is a hostname/ },
  { rule: "example.com/24", reason: /is a hostname/ },
  { rule: "any", reason: /is a hostname/ },
  { rule: "*", reason: /is not an IP address or CIDR/ },
  { rule: "[::1]", reason: /must not be in brackets/ },
  { rule: "[::1]/128", reason: /must not be in brackets/ },
  { rule: "::1::", reason: /is not a valid IPv6 address/ },
  { rule: ":::", reason: /is not a valid IPv6 address/ },
  { rule: "1:2:3:4:5:6:7:8:9", reason: /is not a valid IPv6 address/ },
  { rule: "1:2:3:4:5:6:7", reason: /is not a valid IPv6 address/ },
  { rule: "::00001", reason: /is not a valid IPv6 address/ },
  { rule: "::g", reason: /is not a valid IPv6 address/ },
  { rule: "::ffff:127.1", reason: /is not a valid IPv6 address/ },
  { rule: "::ffff:0x7f.0.0.1", reason: /is not a valid IPv6 address/ },
  { rule: "2001:db8::/32 ", reason: /contains whitespace/ },
  { rule: "10.0.0.1,10.0.0.2", reason: /contains a comma/ },
  {
    rule: "1.2.3.4\n",
    reason: /contains whitespace/,
    shown: '"1.2.3.4\\u000a"',
  },
  {
    rule: "1.2.3.4\0",
    reason: /not printable ASCII/,
    shown: '"1.2.3.4\\u0000"',
  },
  {
    rule: "１２７.0.0.1",
    reason: /not printable ASCII/,
    shown: '"\\uff11\\uff12\\uff17.0.0.1"',
  },
  {
    rule: "127\u200b.0.0.1",
    reason: /not printable ASCII/,
    shown: '"127\\u200b.0.0.1"',
  },
  {
    rule: "\x1b[31m10.0.0.1",
    reason: /not printable ASCII/,
    shown: '"\\u001b[31m10.0.0.1"',
  },
  {
    rule: "1".repeat(5000),
    reason: /is too long \(5000 characters; at most 64\)/,
    shown: `"${"1".repeat(64)}..."`,
  },
];

test("parseRule rejects bad rules with a one-line UsageError naming the rule", () => {
  for (const row of REJECTED_RULES) {
    const error = usageError(() => parseRule(row.rule));
    const shown = row.shown ?? `"${row.rule}"`;
    assert.ok(
      error.message.startsWith(`Invalid rule: ${shown} `),
      `${error.message} should name ${shown}`,
    );
    assert.match(error.message, row.reason, row.rule);
  }
});

test("parseRule gives the documented message for a non-canonical IPv4 rule", () => {
  assert.equal(
    usageError(() => parseRule("127.1")).message,
    'Invalid rule: "127.1" is not a canonical IPv4 address',
  );
  assert.equal(
    usageError(() => parseRule("10.0.0.5/24")).message,
    'Invalid rule: "10.0.0.5/24" has host bits set; did you mean "10.0.0.0/24"',
  );
});

// --------------------------------------------------------------- formatCidr

test("formatCidr formats mapped IPv6 bytes with a dotted quad", () => {
  const bytes = new Uint8Array(16);
  bytes.set([0xff, 0xff, 10, 0, 0, 0], 10);
  assert.equal(
    formatCidr({ family: 6, bytes, prefix: 104 }),
    "::ffff:10.0.0.0/104",
  );
});

test("formatCidr throws RangeError for a byte count or prefix that does not fit", () => {
  const bad: Cidr[] = [
    { family: 4, bytes: new Uint8Array(16), prefix: 8 },
    { family: 6, bytes: new Uint8Array(4), prefix: 8 },
    { family: 4, bytes: new Uint8Array(4), prefix: 33 },
    { family: 6, bytes: new Uint8Array(16), prefix: -1 },
    { family: 4, bytes: new Uint8Array(4), prefix: 1.5 },
  ];
  for (const cidr of bad) {
    assert.throws(() => formatCidr(cidr), RangeError, JSON.stringify(cidr));
  }
});

test("formatCidr output round-trips through parseIp for random IPv6 addresses", () => {
  const random = mulberry32(0x5eed);
  for (let n = 0; n < 2000; n++) {
    const bytes = new Uint8Array(16);
    // Mostly-zero groups, so that every compression case comes up.
    for (let k = 0; k < 8; k++) {
      if (random() < 0.5) continue;
      const value = random() < 0.3 ? 1 : Math.floor(random() * 0x10000);
      bytes[2 * k] = value >>> 8;
      bytes[2 * k + 1] = value & 255;
    }
    const text = formatCidr({ family: 6, bytes, prefix: 128 }).slice(0, -4);
    assert.ok(text.length <= 45, text);
    assert.equal(text, text.toLowerCase(), text);
    assert.doesNotMatch(text, /(^|:)0[0-9a-f]/, text); // no leading zeros
    const parsed = parseIp(text);
    assert.ok(parsed !== null, text);
    assert.equal(parsed.bytes.toHex(), bytes.toHex(), text);
    // The full, uncompressed, upper-case form parses to the same bytes.
    const full = bytes.toHex().toUpperCase().match(/.{4}/g)!.join(":");
    assert.equal(parseIp(full)!.bytes.toHex(), bytes.toHex(), full);
  }
});

// --------------------------------------------------------------- splitRules

test("splitRules drops comments and blank lines and splits on commas and whitespace", () => {
  const text = [
    "\ufeff# moat allow-file",
    "",
    "10.0.0.5",
    "   192.168.1.0/24   # the lab",
    "10.0.0.6,10.0.0.7, 10.0.0.8\t10.0.0.9",
    "#10.9.9.9",
    "  # indented comment",
    "2001:db8::/32 fe80::/10#no space before the hash",
    "\t",
    ",,",
    "172.16.0.0/12\r",
    "::1\r\n127.0.0.1",
  ].join("\n");
  assert.deepEqual(splitRules(text), [
    "10.0.0.5",
    "192.168.1.0/24",
    "10.0.0.6",
    "10.0.0.7",
    "10.0.0.8",
    "10.0.0.9",
    "2001:db8::/32",
    "fe80::/10",
    "172.16.0.0/12",
    "::1",
    "127.0.0.1",
  ]);
});

test("splitRules returns nothing for empty or comment-only text", () => {
  assert.deepEqual(splitRules(""), []);
  assert.deepEqual(splitRules("\n\n  \n# only\n#comments\n"), []);
});

test("splitRules keeps non-ASCII spacing inside a rule so compileAllowlist rejects it", () => {
  const rules = splitRules("10.0.0.1\u00a0/24");
  assert.deepEqual(rules, ["10.0.0.1\u00a0/24"]);
  usageError(() => compileAllowlist({ allow: rules }));
});

// --------------------------------------------------------- compileAllowlist

test("compileAllowlist matches the first and last address of a CIDR and not its neighbours", () => {
  const rows: { rule: string; addr: string; expected: boolean }[] = [
    // /0
    { rule: "0.0.0.0/0", addr: "0.0.0.0", expected: true },
    { rule: "0.0.0.0/0", addr: "255.255.255.255", expected: true },
    { rule: "0.0.0.0/0", addr: "::ffff:128.0.0.1", expected: true },
    { rule: "0.0.0.0/0", addr: "::1", expected: false },
    { rule: "0.0.0.0/0", addr: "2001:db8::1", expected: false },
    { rule: "::/0", addr: "::", expected: true },
    {
      rule: "::/0",
      addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
      expected: true,
    },
    { rule: "::/0", addr: "1.2.3.4", expected: false },
    { rule: "::/0", addr: "::ffff:1.2.3.4", expected: false },
    // /1 on both sides of the sign bit
    { rule: "128.0.0.0/1", addr: "128.0.0.0", expected: true },
    { rule: "128.0.0.0/1", addr: "255.255.255.255", expected: true },
    { rule: "128.0.0.0/1", addr: "127.255.255.255", expected: false },
    { rule: "128.0.0.0/1", addr: "0.0.0.0", expected: false },
    { rule: "0.0.0.0/1", addr: "0.0.0.0", expected: true },
    { rule: "0.0.0.0/1", addr: "127.255.255.255", expected: true },
    { rule: "0.0.0.0/1", addr: "128.0.0.0", expected: false },
    { rule: "8000::/1", addr: "8000::", expected: true },
    {
      rule: "8000::/1",
      addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
      expected: true,
    },
    {
      rule: "8000::/1",
      addr: "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
      expected: false,
    },
    // /8 and /24
    { rule: "10.0.0.0/8", addr: "10.0.0.0", expected: true },
    { rule: "10.0.0.0/8", addr: "10.255.255.255", expected: true },
    { rule: "10.0.0.0/8", addr: "9.255.255.255", expected: false },
    { rule: "10.0.0.0/8", addr: "11.0.0.0", expected: false },
    { rule: "192.168.1.0/24", addr: "192.168.1.0", expected: true },
    { rule: "192.168.1.0/24", addr: "192.168.1.255", expected: true },
    { rule: "192.168.1.0/24", addr: "192.168.0.255", expected: false },
    { rule: "192.168.1.0/24", addr: "192.168.2.0", expected: false },
    // /31 and /32
    { rule: "192.168.1.4/31", addr: "192.168.1.4", expected: true },
    { rule: "192.168.1.4/31", addr: "192.168.1.5", expected: true },
    { rule: "192.168.1.4/31", addr: "192.168.1.3", expected: false },
    { rule: "192.168.1.4/31", addr: "192.168.1.6", expected: false },
    { rule: "255.255.255.254/31", addr: "255.255.255.255", expected: true },
    { rule: "255.255.255.254/31", addr: "255.255.255.253", expected: false },
    { rule: "192.168.1.5/32", addr: "192.168.1.5", expected: true },
    { rule: "192.168.1.5/32", addr: "192.168.1.4", expected: false },
    { rule: "192.168.1.5/32", addr: "192.168.1.6", expected: false },
    { rule: "192.168.1.5", addr: "192.168.1.5", expected: true },
    { rule: "192.168.1.5", addr: "192.168.1.50", expected: false },
    { rule: "0.0.0.0/32", addr: "0.0.0.0", expected: true },
    { rule: "0.0.0.0/32", addr: "0.0.0.1", expected: false },
    // /32 in IPv6
    { rule: "2001:db8::/32", addr: "2001:db8::", expected: true },
    {
      rule: "2001:db8::/32",
      addr: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
      expected: true,
    },
    {
      rule: "2001:db8::/32",
      addr: "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
      expected: false,
    },
    { rule: "2001:db8::/32", addr: "2001:db9::", expected: false },
    // /64
    { rule: "2001:db8:1:2::/64", addr: "2001:db8:1:2::", expected: true },
    {
      rule: "2001:db8:1:2::/64",
      addr: "2001:db8:1:2:ffff:ffff:ffff:ffff",
      expected: true,
    },
    {
      rule: "2001:db8:1:2::/64",
      addr: "2001:db8:1:1:ffff:ffff:ffff:ffff",
      expected: false,
    },
    { rule: "2001:db8:1:2::/64", addr: "2001:db8:1:3::", expected: false },
    // prefixes that end just either side of a 32-bit word
    {
      rule: "2001:db8:1:2::/63",
      addr: "2001:db8:1:3:ffff:ffff:ffff:ffff",
      expected: true,
    },
    { rule: "2001:db8:1:2::/63", addr: "2001:db8:1:4::", expected: false },
    {
      rule: "2001:db8:1:2::/65",
      addr: "2001:db8:1:2:7fff:ffff:ffff:ffff",
      expected: true,
    },
    { rule: "2001:db8:1:2::/65", addr: "2001:db8:1:2:8000::", expected: false },
    {
      rule: "2001:db8:1:2:3:4::/96",
      addr: "2001:db8:1:2:3:4:ffff:ffff",
      expected: true,
    },
    {
      rule: "2001:db8:1:2:3:4::/96",
      addr: "2001:db8:1:2:3:5::",
      expected: false,
    },
    {
      rule: "2001:db8::/33",
      addr: "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff",
      expected: true,
    },
    { rule: "2001:db8::/33", addr: "2001:db8:8000::", expected: false },
    // /127 and /128
    { rule: "2001:db8::4/127", addr: "2001:db8::4", expected: true },
    { rule: "2001:db8::4/127", addr: "2001:db8::5", expected: true },
    { rule: "2001:db8::4/127", addr: "2001:db8::3", expected: false },
    { rule: "2001:db8::4/127", addr: "2001:db8::6", expected: false },
    { rule: "2001:db8::5/128", addr: "2001:db8::5", expected: true },
    { rule: "2001:db8::5/128", addr: "2001:db8::4", expected: false },
    { rule: "2001:db8::5/128", addr: "2001:db8::6", expected: false },
    {
      rule: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127",
      addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
      expected: true,
    },
    {
      rule: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127",
      addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
      expected: false,
    },
    { rule: "::/128", addr: "::", expected: true },
    { rule: "::/128", addr: "::1", expected: false },
  ];
  const failures: string[] = [];
  for (const row of rows) {
    const list = compileAllowlist({ allow: [row.rule] });
    if (list.check(row.addr) !== row.expected) {
      failures.push(`${row.rule} ${row.addr} expected ${row.expected}`);
    }
  }
  assert.deepEqual(failures, []);
});

test("compileAllowlist accepts every IPv6 compression form of one address", () => {
  const list = compileAllowlist({ allow: ["2001:db8::1:0:0:1/128"] });
  assert.deepEqual(
    wrongVerdicts(list, [
      { addr: "2001:db8::1:0:0:1", expected: true },
      { addr: "2001:db8:0:0:1::1", expected: true },
      { addr: "2001:db8:0:0:1:0:0:1", expected: true },
      { addr: "2001:0db8:0000:0000:0001:0000:0000:0001", expected: true },
      { addr: "2001:DB8::1:0:0:1", expected: true },
      { addr: "2001:db8:0::1:0:0:1", expected: true },
      { addr: "2001:db8::1:0:0:0:1", expected: false },
      { addr: "2001:db8::1:0:1", expected: false },
      { addr: "2001:db8:1::1", expected: false },
    ]),
    [],
  );
});

test("compileAllowlist matches IPv4-mapped peers against IPv4 rules and vice versa", () => {
  const v4Rule = compileAllowlist({ allow: ["192.168.1.0/24"] });
  assert.deepEqual(
    wrongVerdicts(v4Rule, [
      { addr: "192.168.1.7", expected: true },
      { addr: "::ffff:192.168.1.7", expected: true },
      { addr: "::FFFF:192.168.1.7", expected: true },
      { addr: "::ffff:c0a8:107", expected: true },
      { addr: "0:0:0:0:0:ffff:192.168.1.7", expected: true },
      { addr: "[::ffff:192.168.1.7]", expected: true },
      { addr: "::ffff:192.168.2.1", expected: false },
      { addr: "::192.168.1.7", expected: false }, // IPv4-compatible: IPv6
      { addr: "64:ff9b::192.168.1.7", expected: false }, // NAT64: IPv6
      { addr: "::ffff:0:192.168.1.7", expected: false }, // SIIT: IPv6
    ]),
    [],
  );
  const mappedRule = compileAllowlist({ allow: ["::ffff:192.168.1.0/120"] });
  assert.equal(mappedRule.allow[0]?.family, 4);
  assert.deepEqual(
    wrongVerdicts(mappedRule, [
      { addr: "192.168.1.7", expected: true },
      { addr: "::ffff:192.168.1.7", expected: true },
      { addr: "192.168.2.1", expected: false },
      { addr: "::ffff:192.168.2.1", expected: false },
    ]),
    [],
  );
  const compatRule = compileAllowlist({ allow: ["::1.2.3.4"] });
  assert.deepEqual(
    wrongVerdicts(compatRule, [
      { addr: "::1.2.3.4", expected: true },
      { addr: "::102:304", expected: true },
      { addr: "1.2.3.4", expected: false },
      { addr: "::ffff:1.2.3.4", expected: false },
    ]),
    [],
  );
});

test("compileAllowlist lets deny rules win over overlapping allow rules", () => {
  const list = compileAllowlist({
    allow: ["10.0.0.0/8", "10.1.2.0/24", "10.9.9.9", "2001:db8::/32"],
    deny: [
      "10.1.0.0/16",
      "10.9.9.9",
      "::ffff:10.2.0.0/112",
      "2001:db8:bad::/48",
    ],
  });
  assert.deepEqual(
    wrongVerdicts(list, [
      { addr: "10.0.0.1", expected: true },
      { addr: "10.1.2.3", expected: false }, // a more specific allow does not beat deny
      { addr: "10.1.0.0", expected: false },
      { addr: "10.1.255.255", expected: false },
      { addr: "10.0.255.255", expected: true },
      { addr: "10.2.0.0", expected: false },
      { addr: "10.3.0.0", expected: true },
      { addr: "10.9.9.9", expected: false }, // same rule in both lists
      { addr: "::ffff:10.9.9.9", expected: false },
      { addr: "10.2.1.5", expected: false }, // mapped deny rule applies to IPv4
      { addr: "::ffff:10.2.1.5", expected: false },
      { addr: "10.3.0.1", expected: true },
      { addr: "2001:db8::1", expected: true },
      { addr: "2001:db8:bad::1", expected: false },
      { addr: "2001:db8:bad:ffff:ffff:ffff:ffff:ffff", expected: false },
      { addr: "2001:db8:bae::", expected: true },
    ]),
    [],
  );
  const denyAll = compileAllowlist({
    allow: ["10.0.0.0/8", "::/0"],
    deny: ["0.0.0.0/0"],
  });
  assert.deepEqual(
    wrongVerdicts(denyAll, [
      { addr: "10.0.0.1", expected: false },
      { addr: "::ffff:10.0.0.1", expected: false },
      { addr: "2001:db8::1", expected: true },
    ]),
    [],
  );
});

test("compileAllowlist allows only loopback when no allow rule is given", () => {
  for (
    const options of [{}, { allow: [] }, { deny: [] }] as AllowlistOptions[]
  ) {
    const list = compileAllowlist(options);
    assert.equal(list.loopbackOnly, true);
    assert.deepEqual(list.allow.map(formatCidr), ["127.0.0.0/8", "::1/128"]);
    assert.deepEqual(
      wrongVerdicts(list, [
        { addr: "127.0.0.1", expected: true },
        { addr: "127.0.0.0", expected: true },
        { addr: "127.255.255.255", expected: true },
        { addr: "::1", expected: true },
        { addr: "[::1]", expected: true },
        { addr: "::ffff:127.0.0.1", expected: true },
        { addr: "::ffff:127.255.255.255", expected: true },
        { addr: "128.0.0.1", expected: false },
        { addr: "126.255.255.255", expected: false },
        { addr: "::2", expected: false },
        { addr: "0.0.0.0", expected: false },
        { addr: "::", expected: false },
        { addr: "::ffff:128.0.0.1", expected: false },
        { addr: "10.0.0.5", expected: false },
      ]),
      [],
    );
  }
  assert.equal(compileAllowlist().loopbackOnly, true);
});

test("compileAllowlist applies deny rules in loopback-only mode", () => {
  const list = compileAllowlist({ deny: ["127.0.0.2"] });
  assert.equal(list.loopbackOnly, true);
  assert.equal(list.check("127.0.0.1"), true);
  assert.equal(list.check("127.0.0.2"), false);
  assert.equal(list.check("::ffff:127.0.0.2"), false);
});

test("compileAllowlist does not allow loopback once allow rules are given", () => {
  const list = compileAllowlist({ allow: ["10.0.0.5"] });
  assert.equal(list.loopbackOnly, false);
  assert.equal(list.check("10.0.0.5"), true);
  assert.equal(list.check("127.0.0.1"), false);
  assert.equal(list.check("::1"), false);
});

test("compileAllowlist splits comma lists and repeated entries", () => {
  const list = compileAllowlist({
    allow: ["10.0.0.5,192.168.1.0/24", "2001:db8::/32"],
    deny: ["192.168.1.13,192.168.1.14"],
  });
  assert.deepEqual(list.allow.map(formatCidr), [
    "10.0.0.5/32",
    "192.168.1.0/24",
    "2001:db8::/32",
  ]);
  assert.deepEqual(list.deny.map(formatCidr), [
    "192.168.1.13/32",
    "192.168.1.14/32",
  ]);
  assert.equal(list.check("192.168.1.14"), false);
  assert.equal(list.check("192.168.1.15"), true);
});

test("compileAllowlist throws UsageError naming the bad rule in either list", () => {
  const rows: { options: AllowlistOptions; shown: string }[] = [
    { options: { allow: ["10.0.0.5,"] }, shown: '""' },
    { options: { allow: [",10.0.0.5"] }, shown: '""' },
    { options: { allow: [""] }, shown: '""' },
    { options: { allow: ["10.0.0.5, 10.0.0.6"] }, shown: '" 10.0.0.6"' },
    { options: { allow: ["10.0.0.5", "127.1"] }, shown: '"127.1"' },
    { options: { deny: ["10.0.0.5/24"] }, shown: '"10.0.0.5/24"' },
    {
      options: { allow: ["10.0.0.0/8"], deny: ["localhost"] },
      shown: '"localhost"',
    },
  ];
  for (const row of rows) {
    const error = usageError(() => compileAllowlist(row.options));
    assert.ok(
      error.message.startsWith(`Invalid rule: ${row.shown} `),
      error.message,
    );
  }
});

test("compileAllowlist describe() summarises the rules in one line", () => {
  assert.equal(
    compileAllowlist({}).describe(),
    "no --allow given: loopback only (127.0.0.0/8, ::1/128)",
  );
  assert.equal(
    compileAllowlist({ deny: ["127.0.0.2"] }).describe(),
    "no --allow given: loopback only (127.0.0.0/8, ::1/128), denying 1 rule (127.0.0.2/32)",
  );
  assert.equal(
    compileAllowlist({ allow: ["10.0.0.5", "192.168.1.0/24"] }).describe(),
    "allowing 2 rules (10.0.0.5/32, 192.168.1.0/24), denying 0",
  );
  assert.equal(
    compileAllowlist({
      allow: ["::ffff:10.0.0.0/104"],
      deny: ["10.0.0.1", "2001:DB8::/32"],
    })
      .describe(),
    "allowing 1 rule (10.0.0.0/8), denying 2 rules (10.0.0.1/32, 2001:db8::/32)",
  );
  const many = Array.from({ length: 20 }, (_, i) => `10.0.0.${i}`);
  const line = compileAllowlist({ allow: many }).describe();
  assert.match(
    line,
    /^allowing 20 rules \(10\.0\.0\.0\/32, .*10\.0\.0\.7\/32, and 12 more\), denying 0$/,
  );
  assert.doesNotMatch(line, /\n/);
});

test("compileAllowlist exposes frozen rules that cannot change the verdict", () => {
  const list = compileAllowlist({ allow: ["10.0.0.0/8"] });
  assert.ok(Object.isFrozen(list));
  assert.ok(Object.isFrozen(list.allow));
  assert.ok(Object.isFrozen(list.allow[0]));
  assert.throws(
    () => (list.allow as Cidr[]).push(parseRule("0.0.0.0/0")),
    TypeError,
  );
  list.allow[0]!.bytes[0] = 11;
  assert.equal(list.check("10.0.0.1"), true);
  assert.equal(list.check("11.0.0.1"), false);
});

test("compileAllowlist check() works detached from its object", () => {
  const { check } = compileAllowlist({ allow: ["10.0.0.0/8"] });
  assert.equal(["10.0.0.1", "11.0.0.1"].filter(check).length, 1);
});

test("compileAllowlist check() never throws and denies non-string input", () => {
  const list = compileAllowlist({ allow: ["0.0.0.0/0", "::/0"] });
  const inputs: unknown[] = [
    undefined,
    null,
    0,
    2130706433,
    {},
    [],
    ["127.0.0.1"],
    { toString: () => "127.0.0.1" },
    Symbol("127.0.0.1"),
    new String("127.0.0.1"),
  ];
  for (const input of inputs) {
    assert.equal(list.check(input as string), false, String(input));
  }
});

test("compileAllowlist agrees with a bit-string reference on random rules and peers", () => {
  const random = mulberry32(0xa11);
  const failures: string[] = [];
  for (let n = 0; n < 300; n++) {
    const family = random() < 0.5 ? 4 : 6;
    const size = family === 4 ? 4 : 16;
    const prefix = Math.floor(random() * (size * 8 + 1));
    const network = randomBytes(random, size);
    for (let bit = prefix; bit < size * 8; bit++) setBit(network, bit, 0);
    const rule = formatCidr({ family, bytes: network, prefix });
    if (family === 6 && rule.startsWith("::ffff:")) continue; // would become IPv4
    const list = compileAllowlist({ allow: [rule] });
    for (let m = 0; m < 20; m++) {
      const peer = randomBytes(random, size);
      if (m % 2 === 0) { // inside, except maybe one flipped prefix bit
        for (let bit = 0; bit < prefix; bit++) {
          setBit(peer, bit, getBit(network, bit));
        }
        if (m % 4 === 0 && prefix > 0) {
          const bit = Math.floor(random() * prefix);
          setBit(peer, bit, 1 - getBit(network, bit));
        }
      }
      const expected =
        bits(peer).slice(0, prefix) === bits(network).slice(0, prefix);
      const text = family === 4
        ? peer.join(".")
        : peer.toHex().match(/.{4}/g)!.join(":");
      if (family === 6 && /^0000:0000:0000:0000:0000:ffff:/.test(text)) {
        continue;
      }
      if (list.check(text) !== expected) failures.push(`${rule} ${text}`);
    }
  }
  assert.deepEqual(failures, []);
});

// ------------------------------------------- node:net as a second reference

/*
 * lib/allowlist.ts keeps its own parser and matcher on the hot path (they are
 * faster than node:net's on both runtimes, and Bun's BlockList accepts
 * "10.1" and "010.1.2.3"); node:net's isIP and BlockList serve here as
 * references that share no code with it.
 */

test("parseIp accepts exactly the texts node:net isIP accepts, zone ids aside", () => {
  const random = mulberry32(0x151);
  const pieces = [
    "::",
    ":",
    ".",
    "0",
    "1",
    "7",
    "00",
    "01",
    "127",
    "255",
    "256",
    "ffff",
    "FFFF",
    "abcd",
    "12345",
    "1.2.3.4",
    "::ffff:",
    "0000",
    "g",
    "x",
    " ",
    "/",
    "[",
    "]",
    "-",
  ];
  const disagree: string[] = [];
  const accepted = { 4: 0, 6: 0 };
  for (let n = 0; n < 200_000; n++) {
    let text = "";
    const length = 1 + Math.floor(random() * 12);
    for (let k = 0; k < length; k++) {
      text += pieces[Math.floor(random() * pieces.length)];
    }
    const ours = parseIp(text);
    const theirs = isIP(text);
    if ((ours?.family ?? 0) !== theirs) disagree.push(JSON.stringify(text));
    if (ours !== null) accepted[ours.family]++;
  }
  assert.deepEqual(disagree.slice(0, 10), []);
  // The comparison covered both families, not only garbage.
  assert.ok(accepted[4] > 100, `${accepted[4]} IPv4 texts`);
  assert.ok(accepted[6] > 1000, `${accepted[6]} IPv6 texts`);
});

/** A node:net BlockList per family holding `cidrs`. */
function blockLists(cidrs: readonly Cidr[]): Record<4 | 6, BlockList> {
  const lists = { 4: new BlockList(), 6: new BlockList() };
  for (const c of cidrs) {
    const text = formatCidr(c);
    lists[c.family].addSubnet(
      text.slice(0, text.indexOf("/")),
      c.prefix,
      c.family === 4 ? "ipv4" : "ipv6",
    );
  }
  return lists;
}

test("compileAllowlist agrees with node:net BlockList on random rules and peers", () => {
  const random = mulberry32(0xb10c);
  const failures: string[] = [];
  let allowed = 0;
  let checks = 0;
  for (let n = 0; n < 200; n++) {
    const family = random() < 0.5 ? 4 : 6;
    const size = family === 4 ? 4 : 16;
    const rules: Cidr[] = [];
    for (let r = 0; r < 1 + Math.floor(random() * 4); r++) {
      const prefix = Math.floor(random() * (size * 8 + 1));
      const bytes = randomBytes(random, size);
      for (let bit = prefix; bit < size * 8; bit++) setBit(bytes, bit, 0);
      const text = formatCidr({ family, bytes, prefix });
      if (text.startsWith("::ffff:")) continue; // would become IPv4
      rules.push(parseRule(text));
    }
    if (rules.length === 0) continue;
    // Every other rule, from the second on, is a deny rule.
    const allow = rules.filter((_, i) => i % 2 === 0);
    const deny = rules.filter((_, i) => i % 2 === 1);
    const list = compileAllowlist({
      allow: allow.map(formatCidr),
      deny: deny.map(formatCidr),
    });
    const allowLists = blockLists(allow);
    const denyLists = blockLists(deny);
    for (let m = 0; m < 20; m++) {
      // Half the peers start inside a rule, some with one prefix bit flipped.
      const peer = randomBytes(random, size);
      const near = rules[m % rules.length]!;
      if (m % 2 === 0) {
        for (let bit = 0; bit < near.prefix; bit++) {
          setBit(peer, bit, getBit(near.bytes, bit));
        }
        if (m % 4 === 0 && near.prefix > 0) {
          const bit = Math.floor(random() * near.prefix);
          setBit(peer, bit, 1 - getBit(peer, bit));
        }
      }
      const text = formatCidr({ family, bytes: peer, prefix: size * 8 });
      const addr = text.slice(0, text.indexOf("/"));
      if (family === 6 && addr.startsWith("::ffff:")) continue;
      const type = family === 4 ? "ipv4" : "ipv6";
      const expected = !denyLists[family].check(addr, type) &&
        allowLists[family].check(addr, type);
      const forms = family === 4 ? [addr, `::ffff:${addr}`] : [addr];
      for (const form of forms) {
        checks++;
        if (list.check(form) !== expected) failures.push(`${rules} ${form}`);
      }
      if (expected) allowed++;
    }
  }
  assert.deepEqual(failures.slice(0, 10), []);
  assert.ok(checks > 2000 && allowed > 500, `${allowed} of ${checks} allowed`);
});

// ------------------------------------------------------ the hostile corpus

/**
 * Peer forms a hostile or confused client might produce (or a buggy runtime
 * might report), with the verdict each must get. "loopback" is the default
 * list; "office" allows 10.0.0.0/8 and 2001:db8::/32 and denies 10.0.0.5,
 * 10.66.0.0/16 and 2001:db8:bad::/48. A false row that comes out true is a
 * bypass.
 */
const HOSTILE_PEERS: {
  list: "loopback" | "office";
  addr: string;
  expected: boolean;
}[] = [
  // loopback: legitimate spellings the runtime may report
  { list: "loopback", addr: "127.0.0.1", expected: true },
  { list: "loopback", addr: "::1", expected: true },
  { list: "loopback", addr: "[::1]", expected: true },
  { list: "loopback", addr: "::ffff:127.0.0.1", expected: true },
  { list: "loopback", addr: "[::ffff:127.0.0.1]", expected: true },
  { list: "loopback", addr: "::FFFF:127.0.0.1", expected: true },
  { list: "loopback", addr: "::ffff:7f00:1", expected: true },
  { list: "loopback", addr: "0:0:0:0:0:ffff:127.0.0.1", expected: true },
  { list: "loopback", addr: "0:0:0:0:0:0:0:1", expected: true },
  {
    list: "loopback",
    addr: "0000:0000:0000:0000:0000:0000:0000:0001",
    expected: true,
  },
  { list: "loopback", addr: "::0:1", expected: true },
  { list: "loopback", addr: "::1%lo", expected: true },
  { list: "loopback", addr: "::1%1", expected: true },
  { list: "loopback", addr: "[::1%lo]", expected: true },
  {
    list: "loopback", // the longest text the runtime could report: 112 characters
    addr: `[0000:0000:0000:0000:0000:ffff:127.255.255.255%${"z".repeat(64)}]`,
    expected: true,
  },
  // loopback: IPv4 spellings other parsers accept
  { list: "loopback", addr: "", expected: false },
  { list: "loopback", addr: " ", expected: false },
  { list: "loopback", addr: "localhost", expected: false },
  { list: "loopback", addr: "LOCALHOST", expected: false },
  { list: "loopback", addr: "localhost.", expected: false },
  { list: "loopback", addr: "127.1", expected: false },
  { list: "loopback", addr: "127.0.1", expected: false },
  { list: "loopback", addr: "127", expected: false },
  { list: "loopback", addr: "0x7f000001", expected: false },
  { list: "loopback", addr: "0x7f.0.0.1", expected: false },
  { list: "loopback", addr: "0x7F.1", expected: false },
  { list: "loopback", addr: "0177.0.0.1", expected: false },
  { list: "loopback", addr: "017700000001", expected: false },
  { list: "loopback", addr: "2130706433", expected: false },
  { list: "loopback", addr: "127.0.0.01", expected: false },
  { list: "loopback", addr: "127.000.000.001", expected: false },
  { list: "loopback", addr: "127.0.0.1.", expected: false },
  { list: "loopback", addr: ".127.0.0.1", expected: false },
  { list: "loopback", addr: "127..0.1", expected: false },
  { list: "loopback", addr: "127.0.0.1.2", expected: false },
  { list: "loopback", addr: "+127.0.0.1", expected: false },
  { list: "loopback", addr: "127.0.0.-1", expected: false },
  { list: "loopback", addr: "127.0.0.256", expected: false },
  { list: "loopback", addr: "127.0.0.1e0", expected: false },
  { list: "loopback", addr: "127.0.0.0x1", expected: false },
  { list: "loopback", addr: "127.0.0.1/8", expected: false },
  { list: "loopback", addr: "127.0.0.1:4320", expected: false },
  { list: "loopback", addr: "[127.0.0.1]", expected: false },
  { list: "loopback", addr: "127.0.0.1%lo", expected: false },
  { list: "loopback", addr: "127.0.0.1%", expected: false },
  // loopback: whitespace, control and non-ASCII characters
  { list: "loopback", addr: "127.0.0.1 ", expected: false },
  { list: "loopback", addr: " 127.0.0.1", expected: false },
  { list: "loopback", addr: "127.0.0.1\n", expected: false },
  { list: "loopback", addr: "127.0.0.1\r\n", expected: false },
  { list: "loopback", addr: "127.0.0.1\t", expected: false },
  { list: "loopback", addr: "127.0.0.1\0", expected: false },
  { list: "loopback", addr: "\x00127.0.0.1", expected: false },
  { list: "loopback", addr: "１２７.0.0.1", expected: false },
  { list: "loopback", addr: "127。0。0。1", expected: false },
  { list: "loopback", addr: "127.0.0.1\u200b", expected: false },
  { list: "loopback", addr: "\ufeff127.0.0.1", expected: false },
  { list: "loopback", addr: "١٢٧.0.0.1", expected: false },
  { list: "loopback", addr: "::１", expected: false },
  { list: "loopback", addr: "::1\0", expected: false },
  { list: "loopback", addr: "::1\n", expected: false },
  // loopback: IPv6 forms that are not ::1 or mapped loopback
  { list: "loopback", addr: "::", expected: false },
  { list: "loopback", addr: "::2", expected: false },
  { list: "loopback", addr: "::0", expected: false },
  { list: "loopback", addr: "1::", expected: false },
  { list: "loopback", addr: "::1:0", expected: false },
  { list: "loopback", addr: "1::1", expected: false },
  { list: "loopback", addr: "::127.0.0.1", expected: false },
  { list: "loopback", addr: "0:0:0:0:0:0:127.0.0.1", expected: false },
  { list: "loopback", addr: "64:ff9b::127.0.0.1", expected: false },
  { list: "loopback", addr: "::ffff:0:127.0.0.1", expected: false },
  { list: "loopback", addr: "::fffe:127.0.0.1", expected: false },
  { list: "loopback", addr: "::1:ffff:127.0.0.1", expected: false },
  { list: "loopback", addr: "ffff::127.0.0.1", expected: false },
  { list: "loopback", addr: "fe80::1%lo", expected: false },
  // loopback: malformed IPv6 around ::1
  { list: "loopback", addr: "::1:", expected: false },
  { list: "loopback", addr: ":::1", expected: false },
  { list: "loopback", addr: "::1::", expected: false },
  { list: "loopback", addr: ":1", expected: false },
  { list: "loopback", addr: "::00001", expected: false },
  { list: "loopback", addr: "00000::1", expected: false },
  { list: "loopback", addr: "0:0:0:0:0:0:0:0:1", expected: false },
  { list: "loopback", addr: "::0:0:0:0:0:0:0:1", expected: false },
  { list: "loopback", addr: "::1/128", expected: false },
  { list: "loopback", addr: "::1 ", expected: false },
  { list: "loopback", addr: "::g1", expected: false },
  { list: "loopback", addr: "::-1", expected: false },
  { list: "loopback", addr: "::+1", expected: false },
  { list: "loopback", addr: "0x::1", expected: false },
  // loopback: bracket tricks
  { list: "loopback", addr: "[::1", expected: false },
  { list: "loopback", addr: "::1]", expected: false },
  { list: "loopback", addr: "[[::1]]", expected: false },
  { list: "loopback", addr: "[::1]]", expected: false },
  { list: "loopback", addr: "[ ::1]", expected: false },
  { list: "loopback", addr: "[]", expected: false },
  { list: "loopback", addr: "[", expected: false },
  { list: "loopback", addr: "[::1]:4320", expected: false },
  { list: "loopback", addr: "[::1]%lo", expected: false },
  // loopback: zone-id tricks
  { list: "loopback", addr: "::1%", expected: false },
  { list: "loopback", addr: "%lo", expected: false },
  { list: "loopback", addr: "%", expected: false },
  { list: "loopback", addr: "%::1", expected: false },
  { list: "loopback", addr: "::1%%lo", expected: false },
  { list: "loopback", addr: "::1%lo%lo", expected: false },
  { list: "loopback", addr: "::1%lo/0", expected: false },
  { list: "loopback", addr: "::1%lo:1", expected: false },
  { list: "loopback", addr: "::1% lo", expected: false },
  { list: "loopback", addr: "::1%lo\n", expected: false },
  { list: "loopback", addr: "::1%lo]", expected: false },
  { list: "loopback", addr: "::1%" + "a".repeat(65), expected: false },
  { list: "loopback", addr: "1.2.3.4%::1", expected: false },
  { list: "loopback", addr: "::2%::1", expected: false },
  // loopback: mapped forms with bad IPv4 tails
  { list: "loopback", addr: "::ffff:127.1", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0.01", expected: false },
  { list: "loopback", addr: "::ffff:0x7f.0.0.1", expected: false },
  { list: "loopback", addr: "::ffff:2130706433", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0.1.", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0.256", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0", expected: false },
  { list: "loopback", addr: "::ffff::127.0.0.1", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0.1:1", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0.1%", expected: false },
  { list: "loopback", addr: "::ffff:127.0.0.1/104", expected: false },
  // loopback: overlong input
  { list: "loopback", addr: "1".repeat(10_000), expected: false },
  { list: "loopback", addr: "0".repeat(200) + "::1", expected: false },
  { list: "loopback", addr: "0:".repeat(100) + ":1", expected: false },
  { list: "loopback", addr: "127.0.0.1" + " ".repeat(200), expected: false },
  { list: "loopback", addr: "::1%" + "1".repeat(200), expected: false },
  // office: the denied host and subnet in every spelling
  { list: "office", addr: "10.0.0.5", expected: false },
  { list: "office", addr: "::ffff:10.0.0.5", expected: false },
  { list: "office", addr: "::ffff:a00:5", expected: false },
  { list: "office", addr: "::FFFF:0A00:0005", expected: false },
  { list: "office", addr: "[::ffff:10.0.0.5]", expected: false },
  { list: "office", addr: "::ffff:10.0.0.5%eth0", expected: false },
  { list: "office", addr: "0:0:0:0:0:ffff:10.0.0.5", expected: false },
  { list: "office", addr: "010.0.0.5", expected: false },
  { list: "office", addr: "10.0.0.05", expected: false },
  { list: "office", addr: "10.5", expected: false },
  { list: "office", addr: "167772165", expected: false },
  { list: "office", addr: "0xa000005", expected: false },
  { list: "office", addr: "10.0.0.5.", expected: false },
  { list: "office", addr: "10.66.1.1", expected: false },
  { list: "office", addr: "::ffff:10.66.255.255", expected: false },
  { list: "office", addr: "10.66.0.0", expected: false },
  { list: "office", addr: "2001:db8:bad::1", expected: false },
  { list: "office", addr: "2001:DB8:BAD:0::1", expected: false },
  {
    list: "office",
    addr: "2001:0db8:0bad:0000:0000:0000:0000:0001",
    expected: false,
  },
  {
    list: "office",
    addr: "2001:db8:bad:ffff:ffff:ffff:ffff:ffff",
    expected: false,
  },
  { list: "office", addr: "2001:db8:bad::1%eth0", expected: false },
  { list: "office", addr: "[2001:db8:bad::1]", expected: false },
  { list: "office", addr: "[2001:db8::1", expected: false },
  { list: "office", addr: "2001:db8::1]", expected: false },
  { list: "office", addr: "[[2001:db8::1]", expected: false },
  // office: neighbours of the denied ranges are allowed
  { list: "office", addr: "10.0.0.4", expected: true },
  { list: "office", addr: "10.0.0.6", expected: true },
  { list: "office", addr: "::ffff:10.0.0.6", expected: true },
  { list: "office", addr: "10.65.255.255", expected: true },
  { list: "office", addr: "10.67.0.0", expected: true },
  {
    list: "office",
    addr: "2001:db8:bac:ffff:ffff:ffff:ffff:ffff",
    expected: true,
  },
  { list: "office", addr: "2001:db8:bae::", expected: true },
  { list: "office", addr: "2001:db8::1%eth0", expected: true },
  // office: outside the allowed ranges
  { list: "office", addr: "127.0.0.1", expected: false },
  { list: "office", addr: "::1", expected: false },
  { list: "office", addr: "9.255.255.255", expected: false },
  { list: "office", addr: "11.0.0.0", expected: false },
  { list: "office", addr: "::10.0.0.6", expected: false },
  { list: "office", addr: "64:ff9b::10.0.0.6", expected: false },
  { list: "office", addr: "::ffff:0:10.0.0.6", expected: false },
  { list: "office", addr: "2001:db9::", expected: false },
  { list: "office", addr: "2001:db7:ffff::", expected: false },
  { list: "office", addr: "fe80::1%eth0", expected: false },
  { list: "office", addr: "10.0.0.6\n", expected: false },
  { list: "office", addr: "10.0.0.6/8", expected: false },
];

test("compileAllowlist gives the expected verdict for every hostile peer form", () => {
  const lists = {
    loopback: compileAllowlist({}),
    office: compileAllowlist({
      allow: ["10.0.0.0/8", "2001:db8::/32"],
      deny: ["10.0.0.5", "10.66.0.0/16", "2001:db8:bad::/48"],
    }),
  };
  assert.ok(HOSTILE_PEERS.length >= 100, `${HOSTILE_PEERS.length} peer forms`);
  const bypasses: string[] = [];
  const wronglyDenied: string[] = [];
  for (const row of HOSTILE_PEERS) {
    const verdict = lists[row.list].check(row.addr);
    if (verdict && !row.expected) {
      bypasses.push(`${row.list} ${JSON.stringify(row.addr)}`);
    }
    if (!verdict && row.expected) {
      wronglyDenied.push(`${row.list} ${JSON.stringify(row.addr)}`);
    }
  }
  assert.deepEqual(bypasses, []);
  assert.deepEqual(wronglyDenied, []);
});

test("compileAllowlist rejects every hostile rule form", () => {
  assert.ok(REJECTED_RULES.length >= 50, `${REJECTED_RULES.length} rule forms`);
  const accepted: string[] = [];
  // A comma list is one rule too many for parseRule but valid for compileAllowlist.
  for (const row of REJECTED_RULES.filter((row) => !row.rule.includes(","))) {
    for (const key of ["allow", "deny"] as const) {
      try {
        compileAllowlist({ [key]: [row.rule] });
        accepted.push(`${key} ${JSON.stringify(row.rule)}`);
      } catch (error) {
        assert.ok(error instanceof UsageError, String(error));
      }
    }
  }
  assert.deepEqual(accepted, []);
});

// ------------------------------------------------------------------ helpers

/** A small seeded PRNG (mulberry32), so random tests are reproducible. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return function next(): number {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(random: () => number, size: number): Uint8Array {
  return Uint8Array.from({ length: size }, () => Math.floor(random() * 256));
}

function getBit(bytes: Uint8Array, bit: number): number {
  return (bytes[bit >> 3]! >> (7 - (bit & 7))) & 1;
}

function setBit(bytes: Uint8Array, bit: number, value: number): void {
  const mask = 1 << (7 - (bit & 7));
  bytes[bit >> 3] = value ? bytes[bit >> 3]! | mask : bytes[bit >> 3]! & ~mask;
}

function bits(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(2).padStart(8, "0")).join("");
}
