// noVNC in Chromium against vhost-gpu: node check.mjs HTTP_PORT WS_PORT OUT [ws|wss]
// Opens page.html (served on HTTP_PORT) in headless Chromium (Debian's, $CHROMIUM or
// /usr/bin/chromium), waits for noVNC to connect to ws://127.0.0.1:WS_PORT/ (wss:// with the
// 4th argument; the test's own CA is not in Chromium's store, so its errors are ignored) and for the
// picture's first bar (white) to be on its canvas, then writes OUT.rgba (the canvas's pixels,
// RGBA), OUT.json (its size) and OUT.png (a screenshot of the page), and types "a" into it.
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [http, ws, out, scheme = 'ws', compression = '2'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // Root in CI has no user namespace sandbox for Chromium; the page is our own.
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']
    .concat(scheme === 'wss' ? ['--ignore-certificate-errors'] : []),
  headless: true,
});
try {
  const page = await browser.newPage({ viewport: { width: 480, height: 320 } });
  page.on('console', (m) => console.error(`page: ${m.text()}`));
  page.on('pageerror', (e) => console.error(`page error: ${e}`));
  page.on('response', (r) => {
    if (r.status() >= 400) console.error(`page: ${r.status()} for ${r.url()}`);
  });
  await page.goto(`http://127.0.0.1:${http}/page.html?port=${ws}&quality=6&compression=${compression}&scheme=${scheme}`);
  await page.waitForFunction(() => window.vgt && window.vgt.connected, null, { timeout: 30000 });
  await page.waitForFunction(() => {
    const c = document.querySelector('#screen canvas');
    if (!c || c.width < 320) return false;
    const d = c.getContext('2d').getImageData(20, 20, 1, 1).data;
    return d[0] > 250 && d[1] > 250 && d[2] > 250;
  }, null, { timeout: 30000 });
  const img = await page.evaluate(() => {
    const c = document.querySelector('#screen canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return { width: c.width, height: c.height, rgba: Array.from(d) };
  });
  writeFileSync(`${out}.rgba`, Buffer.from(img.rgba));
  writeFileSync(`${out}.json`, JSON.stringify({ width: img.width, height: img.height }));
  await page.screenshot({ path: `${out}.png` });
  await page.click('#screen canvas');
  await page.keyboard.press('a');
  // Let the key events leave the page before the browser goes.
  await page.waitForTimeout(1000);
  console.log('novnc check: done');
} finally {
  await browser.close();
}
