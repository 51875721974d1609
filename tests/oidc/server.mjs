// A real OpenID provider for tollgate's end-to-end tests: npm oidc-provider (OpenID Certified),
// configured with client_credentials, resource indicators (opaque, JWT and encrypted JWT access
// tokens), introspection (JSON and RFC 9701 signed), and revocation. Prints "listening <issuer>"
// when up.
//
// Run: PORT=<port> [ENCRYPTION_KEY=<public key PEM file>] node server.mjs
// (node_modules with oidc-provider next to this file). With ENCRYPTION_KEY, access tokens for
// RESOURCE_ENCRYPTED are signed, then encrypted to that key (RSA-OAEP-256 / A256GCM).
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
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

const configuration = {
  clients: [
    {
      // The API's caller.
      client_id: 'web',
      client_secret: 'web-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
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
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'orders.read',
        audience: resource,
                accessTokenTTL: 3600,
        ...tokenFormat(resource),
      }),
    },
  },
  scopes: ['orders.read'],
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, error) => console.error('server_error', error));
const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
