from setuptools import Extension, find_packages, setup

setup(
    name="zspark",
    version="0.1.0",
    description="Event ingestion appliance: HTTP and ZeroMQ in, a durable journal, Kafka and MongoDB out",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]),
    package_data={"zspark.sources": ["static/zspark.js"]},  # served at /zspark.js
    install_requires=[
        # zspark/sources/httpserver.py and logsetup.py rely on pywsgi and hub internals checked
        # against this range (tests/test_gevent_contract.py fails first if they change).
        "gevent>=26.9,<27",
        "pyzmq>=25.1",
        # BSON comes from pymongo's own `bson` module; never install the PyPI package `bson`.
        "pymongo>=4.6",
        "PyYAML>=6.0",
        # Kafka: librdkafka. pykafka (the design card's choice) cannot talk to current brokers.
        "confluent-kafka>=2.3",
        "tqdm>=4.60",
        # /metrics: the text format, the process collector, the parser the tests use.
        "prometheus_client>=0.20",
        # NDJSON lines decode 3x faster than with json, the largest cost of an HTTP batch; used
        # only where it gives json's exact result, json decides the rest (sources/fastjson.py).
        "orjson>=3.9",
    ],
    extras_require={
        # selenium drives Debian's chromium + chromium-driver for tests/test_browser.py; atheris:
        # the coverage-guided fuzzer of the compiled module (tests/fuzz/, run by CI).
        "test": ["nose2>=0.14", "hypothesis>=6.100", "atheris>=2.3", "selenium>=4.15"],
    },
    # The compiled hot paths (zspark/native.py says what each does and how to run without them).
    ext_modules=[Extension("zspark._native", ["zspark/_native.c"], libraries=["z"], extra_compile_args=["-O2", "-Wall"])],
    entry_points={"console_scripts": ["zcmd = zspark.cli:main"]},
    scripts=["scripts/zsend"],
)
