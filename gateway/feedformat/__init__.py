"""The central feed format shared by publisher and gateway: document, signing, RPZ."""
