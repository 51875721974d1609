// A real OpenID provider for tollgate's end-to-end tests: npm oidc-provider (OpenID Certified),
// configured with client_credentials, resource indicators (opaque, JWT and encrypted JWT access
// tokens), introspection (JSON and RFC 9701 signed), revocation, userinfo (`/me`) for the
// account `user-1`, certificate-bound access tokens (RFC 8705) for the client `bound`, whose
// certificate the test sends in `x-test-client-cert`, and DPoP-bound access tokens (a token
// request with a `DPoP` proof). Prints "listening <issuer>" when up.
//
// Run: PORT=<port> [ENCRYPTION_KEY=<public key PEM file>] [TEST_USER_TOKENS=1] [CLOCK_TOLERANCE=<s>]
//   node server.mjs
// (node_modules with oidc-provider next to this file). With ENCRYPTION_KEY, access tokens for
// RESOURCE_ENCRYPTED are signed, then encrypted to that key (RSA-OAEP-256 / A256GCM).
//
// With TEST_USER_TOKENS=1 a test-only route issues user-bound access tokens, as the token
// endpoint does at the end of an authorization-code flow (no browser, login or consent):
//   POST /test/user-token  (content-type: application/json)
//   {"sub": "user-1", "scope": "openid profile email orders.read",
//    "resource": "<optional resource indicator>", "expires_in": <optional seconds>}
//   200 {"access_token": ..., "token_type": "Bearer", "expires_in": ..., "scope": ...}
//   400 {"error": "invalid_request" | "invalid_scope", "error_description": ...}
// It saves a Grant (account `sub`, client `web`, the scopes) and an AccessToken bound to it
// (gty authorization_code) with the provider's own models. Without `resource` the token is
// opaque, has no audience and carries the requested scopes: userinfo accepts it when `openid` is
// among them and the account exists. With `resource` it is that resource server's token (its
// audience, format and scopes), which userinfo refuses, like the provider's own flow.
// Defaults: sub "user-1", scope "openid". Any sub is accepted; only user-1 is a known account.
//
// CLOCK_TOLERANCE=<seconds> sets the provider's clockTolerance (default 15). It decides how long
// userinfo still accepts an expired access token (until exp + clockTolerance); introspection
// answers {"active": false} from exp on regardless.
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
if (!port) {
  console.error('PORT is required');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'op-rs256', use: 'sig', alg: 'RS256' };

export const RESOURCE_OPAQUE = 'https://api.example.com/opaque';
export const RESOURCE_JWT = 'https://api.example.com/jwt';
export const RESOURCE_ENCRYPTED = 'https://api.example.com/encrypted';
const encryptionKey = process.env.ENCRYPTION_KEY
  ? createPublicKey(readFileSync(process.env.ENCRYPTION_KEY))
  : undefined;

// The access-token format of each resource server.
function tokenFormat(resource) {
  if (resource === RESOURCE_JWT) {
    return { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
  }
  if (resource === RESOURCE_ENCRYPTED && encryptionKey) {
    return {
      accessTokenFormat: 'jwt',
      jwt: {
        sign: { alg: 'RS256' },
        encrypt: { alg: 'RSA-OAEP-256', enc: 'A256GCM', key: encryptionKey, kid: 'api-enc' },
      },
    };
  }
  return { accessTokenFormat: 'opaque' };
}

// What each resource server is: its scope, audience, token lifetime and format.
function resourceServerInfo(resource) {
  return {
    scope: 'orders.read',
    audience: resource,
    accessTokenTTL: 3600,
    ...tokenFormat(resource),
  };
}

// The end users: userinfo answers with the claims their token's scopes allow.
const ACCOUNTS = {
  'user-1': { sub: 'user-1', name: 'User One', email: 'user-1@example.com', email_verified: true },
};

async function findAccount(ctx, sub) {
  const claims = ACCOUNTS[sub];
  if (!claims) {
    return undefined;
  }
  return { accountId: sub, claims: async () => ({ ...claims }) };
}

let clockTolerance;
if (process.env.CLOCK_TOLERANCE !== undefined) {
  clockTolerance = Number(process.env.CLOCK_TOLERANCE);
  if (!Number.isSafeInteger(clockTolerance) || clockTolerance < 0) {
    console.error('CLOCK_TOLERANCE must be a whole number of seconds');
    process.exit(2);
  }
}

const configuration = {
  ...(clockTolerance !== undefined ? { clockTolerance } : {}),
  clients: [
    {
      // The API's caller: machine tokens (client_credentials), and user tokens (the
      // authorization-code grant; see TEST_USER_TOKENS).
      client_id: 'web',
      client_secret: 'web-secret',
      grant_types: ['client_credentials', 'authorization_code'],
      redirect_uris: ['https://app.example.com/callback'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // RFC 8705: its access tokens carry cnf.x5t#S256 of the certificate it presented.
      client_id: 'bound',
      client_secret: 'bound-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      tls_client_certificate_bound_access_tokens: true,
    },
    {
      // tollgate, introspecting.
      client_id: 'gateway',
      client_secret: 'gateway-secret',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      introspection_signed_response_alg: 'RS256',
    },
  ],
  jwks: { keys: [signingKey] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    jwtIntrospection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE_OPAQUE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => resourceServerInfo(resource),
    },
    userinfo: { enabled: true },
    // Certificate-bound access tokens. The token endpoint is plain HTTP here: the test hands
    // the client's certificate over in a header (URL-encoded PEM, the way a proxy that
    // terminated mutual TLS forwards it), which stands in for the TLS connection's own.
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      getCertificate(ctx) {
        const forwarded = ctx.get('x-test-client-cert');
        return forwarded ? decodeURIComponent(forwarded) : undefined;
      },
      certificateAuthorized: () => false,
      certificateSubjectMatches: () => false,
    },
    // DPoP (RFC 9449): a token request with a DPoP proof gets a token bound to its key
    // (cnf.jkt), token_type DPoP.
    dPoP: { enabled: true },
  },
  findAccount,
  // openid: sub (the provider's default); the userinfo claims of profile and email.
  claims: { profile: ['name'], email: ['email', 'email_verified'] },
  scopes: ['openid', 'profile', 'email', 'orders.read'],
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, error) => console.error('server_error', error));

// POST /test/user-token (TEST_USER_TOKENS=1 only): see the top of this file.
const USER_TOKEN_PATH = '/test/user-token';
const testUserTokens = process.env.TEST_USER_TOKENS === '1';

class BadRequest extends Error {
  constructor(error, description) {
    super(description);
    this.error = error;
  }
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) {
      throw new BadRequest('invalid_request', 'body too large');
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) {
    return {};
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new BadRequest('invalid_request', 'body is not JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new BadRequest('invalid_request', 'body must be a JSON object');
  }
  return body;
}

async function issueUserToken(body) {
  const { sub = 'user-1', scope = 'openid', resource, expires_in: expiresIn } = body;
  if (typeof sub !== 'string' || !sub) {
    throw new BadRequest('invalid_request', 'sub must be a non-empty string');
  }
  if (typeof scope !== 'string') {
    throw new BadRequest('invalid_request', 'scope must be a string');
  }
  if (resource !== undefined && (typeof resource !== 'string' || !URL.canParse(resource))) {
    throw new BadRequest('invalid_request', 'resource must be an absolute URI');
  }
  if (expiresIn !== undefined && !(Number.isSafeInteger(expiresIn) && expiresIn > 0)) {
    throw new BadRequest('invalid_request', 'expires_in must be a positive integer');
  }
  const requested = [...new Set(scope.split(' ').filter(Boolean))];
  const unknown = requested.filter((s) => !configuration.scopes.includes(s));
  if (unknown.length) {
    throw new BadRequest('invalid_scope', `unknown scope: ${unknown.join(' ')}`);
  }

  const client = await provider.Client.find('web');
  // The consent the authorization endpoint would have recorded.
  const grant = new provider.Grant({ accountId: sub, clientId: client.clientId });
  grant.addOIDCScope(requested);
  let resourceServer;
  if (resource !== undefined) {
    resourceServer = new provider.ResourceServer(resource, resourceServerInfo(resource));
    grant.addResourceScope(resource, requested.filter((s) => resourceServer.scopes.has(s)));
  }
  const grantId = await grant.save();

  // What the token endpoint issues for the code (lib/helpers/grant_common.js, issueTokens).
  const token = new provider.AccessToken({
    accountId: sub,
    client,
    grantId,
    gty: 'authorization_code',
    ...(expiresIn !== undefined ? { expiresIn } : {}),
  });
  if (resourceServer) {
    token.resourceServer = resourceServer;
    token.scope = grant.getResourceScopeFiltered(
      resource,
      requested.filter((s) => resourceServer.scopes.has(s)),
    );
  } else {
    token.scope = grant.getOIDCScopeFiltered(new Set(requested));
  }
  const accessToken = await token.save();
  return {
    access_token: accessToken,
    token_type: token.tokenType,
    expires_in: token.expiration,
    scope: token.scope || undefined,
  };
}

async function userTokenRoute(req, res) {
  let status = 200;
  let answer;
  try {
    if (req.method !== 'POST') {
      status = 405;
      res.setHeader('allow', 'POST');
      answer = { error: 'invalid_request', error_description: 'POST only' };
    } else {
      answer = await issueUserToken(await readJson(req));
    }
  } catch (error) {
    if (error instanceof BadRequest) {
      status = 400;
      answer = { error: error.error, error_description: error.message };
    } else {
      console.error('test user token', error);
      status = 500;
      answer = { error: 'server_error', error_description: String(error?.message ?? error) };
    }
  }
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(answer));
}

function pathname(req) {
  try {
    return new URL(req.url, issuer).pathname;
  } catch {
    return undefined;
  }
}

const handle = provider.callback();
const server = createServer((req, res) => {
  if (testUserTokens && pathname(req) === USER_TOKEN_PATH) {
    userTokenRoute(req, res);
    return;
  }
  handle(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
