// A real OIDC provider on loopback for the broker's tests: oauth2-mock-server's OAuth2Server
// on 127.0.0.1 and a port the OS picks, with an RS256, an ES256 and an EdDSA key.
//
// Started by tests/oidc_provider.py. Once listening it prints one JSON line on stdout:
//   {"issuer": "http://127.0.0.1:PORT", "keys": [{"kid": ..., "alg": ...}, ...]}
// Then it reads commands from stdin, one JSON object a line, and answers each with one line:
//   {"op": "generate", "alg": "ES256", "kid": "es256-2", "publish": false}  a new key
//   {"op": "publish", "kid": ...} / {"op": "retire", "kid": ...}  show / hide it in the JWKS
//   {"op": "stats"}  -> {"jwks": <key set requests served so far>}
// It stops when stdin closes (so it never outlives the test run) or on SIGTERM.
//
// Tokens come over HTTP from POST /token (grant_type=client_credentials, aud=...), with these
// extra form fields, applied in the beforeTokenSigning hook:
//   kid         sign with this key (default: the keys in turn)
//   expires_in  lifetime in seconds (negative for an expired token)
//   sub         the subject
//   claims      a JSON object merged into the payload (org, realm_access.roles, iss, ...)
//   header      a JSON object merged into the header (e.g. another key's kid)
import { createInterface } from "node:readline";
import { OAuth2Server } from "oauth2-mock-server";

const INITIAL = [
  ["RS256", "rs256-1"],
  ["ES256", "es256-1"],
  ["EdDSA", "eddsa-1"],
];

const server = new OAuth2Server();
const keys = server.issuer.keys;
const hidden = new Set();
let jwksServed = 0;

// The JWKS handler calls keys.toJSON() per request: count it, and leave out retired keys.
const toJSON = keys.toJSON.bind(keys);
keys.toJSON = (includePrivateFields) => {
  if (!includePrivateFields) jwksServed += 1;
  return toJSON(includePrivateFields).filter((k) => !hidden.has(k.kid));
};

// Let the token request pick the signing key and lifetime (the stock handler uses the keys in
// turn and one hour).
const service = server.service;
service.buildToken = async (req, expiresIn, scopesOrTransform) => {
  const body = req.body ?? {};
  server.issuer.once("beforeSigning", (token) => service.emit("beforeTokenSigning", token, req));
  return server.issuer.buildToken({
    kid: typeof body.kid === "string" && body.kid ? body.kid : undefined,
    expiresIn: body.expires_in !== undefined ? Number(body.expires_in) : expiresIn,
    scopesOrTransform,
  });
};

service.on("beforeTokenSigning", (token, req) => {
  const body = req.body ?? {};
  if (typeof body.sub === "string") token.payload.sub = body.sub;
  if (typeof body.claims === "string") Object.assign(token.payload, JSON.parse(body.claims));
  if (typeof body.header === "string") Object.assign(token.header, JSON.parse(body.header));
});

async function handle(command) {
  switch (command.op) {
    case "generate": {
      const key = await keys.generate(command.alg, { kid: command.kid });
      if (command.publish === false) hidden.add(key.kid);
      return { kid: key.kid, alg: key.alg };
    }
    case "publish":
      hidden.delete(command.kid);
      return { kid: command.kid };
    case "retire":
      hidden.add(command.kid);
      return { kid: command.kid };
    case "stats":
      return { jwks: jwksServed };
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

for (const [alg, kid] of INITIAL) await keys.generate(alg, { kid });
await server.start(0, "127.0.0.1");
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(JSON.stringify({
  issuer: server.issuer.url,
  keys: INITIAL.map(([alg, kid]) => ({ kid, alg })),
}) + "\n");

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  let reply;
  try {
    reply = { ok: true, ...(await handle(JSON.parse(line))) };
  } catch (error) {
    reply = { ok: false, error: String(error) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
lines.on("close", async () => {
  await server.stop();
  process.exit(0);
});
process.on("SIGTERM", async () => {
  await server.stop();
  process.exit(0);
});
