import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  defaultSourceName,
  type InputSpec,
  parseInputArg,
  parseShipConfig,
  planSources,
} from "../lib/ship/sources.ts";
import { UsageError } from "../lib/errors.ts";

/** A hostname function that fails the test when a file's name needs it. */
function noHost(): string {
  throw new Error("hostname asked for, but no input is stdin");
}

function usage(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof UsageError, String(err));
    assert.match(err.message, message);
    assert.doesNotMatch(err.message, /\n/, "one line");
    return true;
  });
}

describe("parseInputArg", () => {
  const cases: [string, InputSpec][] = [
    ["/var/log/auth.log", { path: "/var/log/auth.log" }],
    ["auth.log", { path: "/srv/auth.log" }],
    ["../x/syslog", { path: "/x/syslog" }],
    ["access.log=nginx-access", {
      path: "/srv/access.log",
      name: "nginx-access",
    }],
    ["/a=b/c.log=web", { path: "/a=b/c.log", name: "web" }],
    ["-", { path: "-" }],
    ["-=journal", { path: "-", name: "journal" }],
    ["./-", { path: "/srv/-" }],
  ];
  for (const [arg, want] of cases) {
    test(`parseInputArg reads ${JSON.stringify(arg)}`, () => {
      assert.deepEqual(parseInputArg(arg, { cwd: "/srv" }), want);
    });
  }

  test("parseInputArg refuses an empty path or name", () => {
    usage(
      () => parseInputArg("=web", { cwd: "/" }),
      /Invalid input "=web": expected FILE/,
    );
    usage(
      () => parseInputArg("a.log=", { cwd: "/" }),
      /name after "=" is empty/,
    );
    usage(() => parseInputArg("", { cwd: "/" }), /expected FILE/);
  });
});

describe("parseShipConfig", () => {
  test("parseShipConfig reads paths and names, skipping comments and blank lines", () => {
    const text = [
      "# the web host",
      "",
      "/var/log/nginx/access.log = nginx-access",
      "  auth.log  ",
      "sub/app.log=app\r",
      "   # indented comment",
      "/path/with=sign.log=named",
    ].join("\n");
    assert.deepEqual(parseShipConfig(text, { file: "/etc/moat/ship.conf" }), [
      { path: "/var/log/nginx/access.log", name: "nginx-access" },
      { path: "/etc/moat/auth.log" },
      { path: "/etc/moat/sub/app.log", name: "app" },
      { path: "/path/with=sign.log", name: "named" },
    ]);
  });

  test("parseShipConfig names the line of a bad entry", () => {
    usage(
      () => parseShipConfig("a.log\n-\n", { file: "/etc/s.conf" }),
      /--config "\/etc\/s\.conf" line 2: standard input/,
    );
    usage(
      () => parseShipConfig("a.log\n\nb.log = \n", { file: "c" }),
      /line 3: expected PATH or PATH=NAME/,
    );
    usage(
      () => parseShipConfig("= name\n", { file: "c" }),
      /line 1: expected PATH or PATH=NAME/,
    );
  });

  test("parseShipConfig of an empty file is no inputs", () => {
    assert.deepEqual(parseShipConfig("# nothing\n\n", { file: "/c" }), []);
  });
});

describe("defaultSourceName", () => {
  const cases: [string, string][] = [
    ["/var/log/auth.log", "auth"],
    ["/var/log/syslog", "syslog"],
    ["/var/log/nginx/access.log", "access"],
    ["/var/log/app.log.1", "app.log.1"],
    ["/var/log/kern.LOG", "kern.LOG"],
    ["/srv/.log", ".log"],
    ["/srv/x.log.log", "x.log"],
  ];
  for (const [path, name] of cases) {
    test(`defaultSourceName names ${path} ${JSON.stringify(name)}`, () => {
      assert.equal(defaultSourceName(path), name);
    });
  }
});

describe("planSources", () => {
  test("planSources makes each file a source named after it", () => {
    assert.deepEqual(
      planSources([
        { path: "/var/log/auth.log" },
        { path: "/var/log/kern.log" },
        { path: "/var/log/nginx/access.log", name: "nginx-access" },
      ], { hostname: noHost }),
      [
        { name: "auth", inputs: ["/var/log/auth.log"] },
        { name: "kern", inputs: ["/var/log/kern.log"] },
        { name: "nginx-access", inputs: ["/var/log/nginx/access.log"] },
      ],
    );
  });

  test("planSources names stdin after the host unless named", () => {
    assert.deepEqual(planSources([{ path: "-" }], { hostname: () => "web1" }), [
      { name: "web1", inputs: ["-"] },
    ]);
    assert.deepEqual(
      planSources([{ path: "-", name: "journal" }, { path: "/l/a.log" }], {
        hostname: noHost,
      }),
      [{ name: "journal", inputs: ["-"] }, { name: "a", inputs: ["/l/a.log"] }],
    );
  });

  test("planSources lets --source name the one input without a name", () => {
    assert.deepEqual(
      planSources([{ path: "/l/app.log" }], {
        source: "web",
        hostname: noHost,
      }),
      [{ name: "web", inputs: ["/l/app.log"] }],
    );
    assert.deepEqual(
      planSources([{ path: "-" }], { source: "journal", hostname: noHost }),
      [{ name: "journal", inputs: ["-"] }],
    );
    assert.deepEqual(
      planSources([{ path: "/l/a.log", name: "x" }, { path: "-" }], {
        source: "journal",
        hostname: noHost,
      }),
      [{ name: "x", inputs: ["/l/a.log"] }, {
        name: "journal",
        inputs: ["-"],
      }],
    );
  });

  test("planSources refuses --source with several unnamed inputs, or none", () => {
    usage(
      () =>
        planSources([{ path: "/l/a.log" }, { path: "/l/b.log" }], {
          source: "web",
          hostname: noHost,
        }),
      /--source names one input, but 2 have no name \("\/l\/a\.log", "\/l\/b\.log"\)/,
    );
    usage(
      () =>
        planSources([{ path: "/l/a.log", name: "a" }], {
          source: "web",
          hostname: noHost,
        }),
      /--source "web" names no input/,
    );
  });

  test("planSources refuses two inputs that would get the same name, naming both", () => {
    usage(
      () =>
        planSources([
          { path: "/var/log/a/app.log" },
          { path: "/var/log/b/app.log" },
        ], { hostname: noHost }),
      /"\/var\/log\/a\/app\.log" and "\/var\/log\/b\/app\.log" would both be source "app"/,
    );
    // A default name meeting a given one is no better.
    usage(
      () =>
        planSources([
          { path: "/var/log/x.log", name: "auth" },
          { path: "/var/log/auth.log" },
        ], { hostname: noHost }),
      /"\/var\/log\/x\.log" and "\/var\/log\/auth\.log" would both be source "auth"/,
    );
    usage(
      () =>
        planSources([{ path: "/l/web1" }, { path: "-" }], {
          hostname: () => "web1",
        }),
      /Standard input \("-"\) must be a source of its own, but "\/l\/web1"/,
    );
  });

  test("planSources ships inputs named alike as one source", () => {
    assert.deepEqual(
      planSources([
        { path: "/l/a.log", name: "web1" },
        { path: "/l/b.log" },
        { path: "/l/c.log", name: "web1" },
      ], { hostname: noHost }),
      [
        { name: "web1", inputs: ["/l/a.log", "/l/c.log"] },
        { name: "b", inputs: ["/l/b.log"] },
      ],
    );
  });

  test("planSources refuses an input given twice", () => {
    usage(
      () =>
        planSources([{ path: "/l/a.log" }, { path: "/l/a.log", name: "x" }], {
          hostname: noHost,
        }),
      /"\/l\/a\.log" is given twice/,
    );
    usage(
      () =>
        planSources([{ path: "-" }, { path: "-", name: "x" }], {
          hostname: noHost,
        }),
      /standard input \("-"\) is given twice/,
    );
  });

  test("planSources refuses names the server would refuse, saying how to name the input", () => {
    usage(
      () => planSources([{ path: "/var/log/syslog" }], { hostname: noHost }),
      /"\/var\/log\/syslog" would be source "syslog", which is reserved for the syslog port: name it as \/var\/log\/syslog=NAME/,
    );
    usage(
      () =>
        planSources([{ path: "-" }], { source: "syslog", hostname: noHost }),
      /Invalid source name "syslog" for standard input .*reserved for the syslog port/,
    );
    usage(
      () =>
        planSources([{ path: "/l/a", name: "x".repeat(129) }], {
          hostname: noHost,
        }),
      /longer than 128 characters/,
    );
    assert.equal(
      planSources([{ path: "/l/a", name: "x".repeat(128) }], {
        hostname: noHost,
      })[0]!.name.length,
      128,
    );
    usage(
      () => planSources([{ path: "/l/a\x1b[2J.log" }], { hostname: noHost }),
      /would be source "a\\e\[2J", which contains a control character/,
    );
  });

  test("planSources needs an input", () => {
    usage(() => planSources([], { hostname: noHost }), /ship needs FILE/);
  });
});
