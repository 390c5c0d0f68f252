// A real OpenID Provider on loopback for the console's login tests: panva's oidc-provider
// (a certified implementation) on 127.0.0.1 and a port the OS picks.
//
// Started by tests/oidc_provider.py (``oidc_login_provider``). Once listening it prints one JSON
// line on stdout: {"issuer": "http://127.0.0.1:PORT"}; it stops when stdin closes or on SIGTERM.
//
// What it does, as a county's IdP would for the broker's console:
// - the authorization code flow, PKCE (S256) required of every client, codes single-use (a
//   replayed code is refused and what it issued is revoked), nonce carried into the ID token;
// - clients registered by the tests over HTTP (Dynamic Client Registration, RFC 7591, at the
//   discovery document's registration_endpoint), public (token_endpoint_auth_method "none")
//   or confidential;
// - a minimal login page of its own (any login, any password; the stock development pages
//   load a web font from the internet). The login is the account: "ROLE@ORG" (e.g. "consumer@economic-bureau") gets the claims org=ORG and
//   roles=[ROLE]; any other login gets neither (a user the broker must refuse). Consent is
//   given by the provider itself (a first-party client), so the login page is the only page;
// - JWT access tokens (RFC 9068) for the resource "urn:broker" with the audience "broker",
//   carrying org and roles; RS256 keys generated at start.
import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { generateKeyPair, exportJWK } from "jose";
import Provider from "oidc-provider";

const RESOURCE = "urn:broker";
const AUDIENCE = "broker";

function claimsOf(accountId) {
  const match = /^([a-z]+)@([a-z0-9-]+)$/.exec(accountId);
  return match ? { org: match[2], roles: [match[1]] } : {};
}

const { privateKey } = await generateKeyPair("RS256", { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: "login-rs256-1", alg: "RS256", use: "sig" };

const server = createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString("base64url")] },
  scopes: ["openid", "profile", "broker"],
  claims: { openid: ["sub"], broker: ["org", "roles"] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // The stock pages load a web font from the internet: plain ones instead.
      logoutSource: (ctx, form) => {
        ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Test identity provider: sign out</title></head><body><main><h1>Sign out?</h1>${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button></main></body></html>`;
      },
      postLogoutSuccessSource: (ctx) => {
        ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Test identity provider: signed out</title></head><body><main><h1>Signed out</h1>
</main></body></html>`;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== RESOURCE) throw new Provider.errors.InvalidTarget();
        return {
          scope: "broker",
          audience: AUDIENCE,
          accessTokenFormat: "jwt",
          accessTokenTTL: 3600,
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  async findAccount(_ctx, accountId) {
    return { accountId, claims: async () => ({ sub: accountId, ...claimsOf(accountId) }) };
  },
  async extraTokenClaims(_ctx, token) {
    return token.kind === "AccessToken" ? claimsOf(token.accountId) : undefined;
  },
  // A first-party client: the provider grants what is asked without a consent page.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope("openid broker");
    grant.addResourceScope(RESOURCE, "broker");
    await grant.save();
    return grant;
  },
});

// The login page: a minimal interaction of its own (the stock development pages load a web
// font from the internet, which these machines cannot reach). Any login, any password.
const callback = provider.callback();
const LOGIN_PAGE = (uid) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test identity provider: sign in</title></head>
<body><main><h1>Sign in</h1>
<form method="post" action="/interaction/${uid}/login" autocomplete="off">
<label for="login">Login</label> <input id="login" name="login" type="text" required autofocus>
<label for="password">Password</label> <input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form></main></body></html>`;

async function readForm(req) {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10000) throw new Error("form too large");
  }
  return new URLSearchParams(body);
}

server.on("request", async (req, res) => {
  const match = /^\/interaction\/([\w-]+)(\/login)?$/.exec(new URL(req.url, issuer).pathname);
  if (!match) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== match[1]) throw new Error("another interaction");
    if (req.method === "GET" && !match[2]) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(LOGIN_PAGE(details.uid));
      return;
    }
    if (req.method === "POST" && match[2]) {
      const login = (await readForm(req)).get("login");
      if (!login) throw new Error("no login");
      await provider.interactionFinished(req, res, { login: { accountId: login } },
        { mergeWithLastSubmission: false });
      return;
    }
    res.writeHead(405).end();
  } catch (error) {
    res.writeHead(400, { "content-type": "text/plain" }).end(`interaction failed: ${error.message}`);
  }
});
process.stdout.write(JSON.stringify({ issuer }) + "\n");

async function stop() {
  server.close();
  process.exit(0);
}

createInterface({ input: process.stdin }).on("close", stop);
process.on("SIGTERM", stop);
