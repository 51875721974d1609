// A real DPoP client for tollgate's end-to-end tests: npm oauth4webapi (RFC 9449 proofs, the
// `DPoP-Nonce` cache and `use_dpop_nonce` detection are the library's own). It gets a
// DPoP-bound access token from the test's OpenID provider (client_credentials, client `web`),
// then calls the API through a proxy four times, as an application using the library would:
//
//   1. without a nonce: the library must recognise tollgate's `use_dpop_nonce` challenge
//      (`isDPoPNonceError`) and cache the answer's `DPoP-Nonce`;
//   2. the retry, with that nonce: allowed;
//   3. once the nonce is no longer the current one (the test waits for tollgate's next
//      half-lifetime step, read from the nonce's issue time): allowed, and the answer renews it;
//   4. with the renewed nonce: allowed.
//
// Every request goes to 127.0.0.1:PROXY_PORT with the Host of API_URL (the library makes its
// proofs for API_URL, as a client of the real host would). Prints one JSON line: for each call,
// the status, whether the library saw a nonce error, the nonce its proof carried and the
// `DPoP-Nonce` of the answer.
//
// Run: node dpop-client.mjs <oauth4webapi install dir>
//   env ISSUER, RESOURCE, API_URL (http://api.example.com/orders/1), PROXY_PORT, LIFETIME (s)
import { request } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.argv[2];
const oauth = await import(
  pathToFileURL(join(dir, 'node_modules', 'oauth4webapi', 'build', 'index.js')).href
);
const { ISSUER, RESOURCE, API_URL, PROXY_PORT, LIFETIME } = process.env;
if (!ISSUER || !RESOURCE || !API_URL || !PROXY_PORT || !LIFETIME) {
  console.error('ISSUER, RESOURCE, API_URL, PROXY_PORT and LIFETIME are required');
  process.exit(2);
}
const insecure = { [oauth.allowInsecureRequests]: true };

// The authorization server, from its discovery document.
const issuer = new URL(ISSUER);
const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, insecure),
);
const client = { client_id: 'web' };
const dpop = oauth.DPoP(client, await oauth.generateKeyPair('ES256'));
const grant = () =>
  oauth.clientCredentialsGrantRequest(
    as,
    client,
    oauth.ClientSecretBasic('web-secret'),
    { scope: 'orders.read', resource: RESOURCE },
    { DPoP: dpop, ...insecure },
  );
const token = await oauth.processClientCredentialsResponse(as, client, await grant());
if (token.token_type !== 'dpop') {
  console.error(`not a DPoP-bound token: ${JSON.stringify(token)}`);
  process.exit(1);
}

// The nonce a proof carries (the proof is the library's; only its payload is read).
function nonceOf(proof) {
  const payload = JSON.parse(Buffer.from(proof.split('.')[1], 'base64url').toString());
  return payload.nonce ?? null;
}

// fetch to the proxy, keeping the URL's Host.
const calls = [];
async function proxied(url, init) {
  const target = new URL(url);
  const headers = { ...init.headers, host: target.host };
  const call = { nonce: nonceOf(headers.dpop) };
  calls.push(call);
  const response = await new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: Number(PROXY_PORT),
        method: init.method,
        path: target.pathname + target.search,
        headers,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const out = new Headers();
          for (let i = 0; i < res.rawHeaders.length; i += 2) {
            out.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
          }
          resolve(new Response(Buffer.concat(chunks), { status: res.statusCode, headers: out }));
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
  call.status = response.status;
  call.dpop_nonce = response.headers.get('dpop-nonce');
  return response;
}

async function callApi() {
  try {
    const response = await oauth.protectedResourceRequest(
      token.access_token,
      'GET',
      new URL(API_URL),
      undefined,
      undefined,
      { DPoP: dpop, [oauth.customFetch]: proxied, ...insecure },
    );
    calls.at(-1).body = await response.text();
  } catch (err) {
    calls.at(-1).nonce_error = oauth.isDPoPNonceError(err);
    calls.at(-1).error = String(err?.message ?? err);
  }
}

await callApi();
await callApi();
// Wait for tollgate's next nonce: a nonce starts with its issue time (8 bytes, big-endian
// seconds), and a new one is handed out every half lifetime.
const first = calls[0].dpop_nonce;
if (first) {
  const issued = Number(Buffer.from(first, 'base64url').readBigUInt64BE(0));
  const next = (issued + Number(LIFETIME) / 2) * 1000 + 300;
  await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
}
await callApi();
await callApi();
console.log(JSON.stringify(calls));
