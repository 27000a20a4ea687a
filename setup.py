"""Packaging for vhack: everything is read from settings.ini (nbdev 2 convention)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license='Apache Software License 2.0',
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['vhack', 'vhack.*']),
    include_package_data=True,
    package_data={'vhack': ['data/*', 'data/**/*']},
    python_requires='>=' + cfg['min_python'],
    install_requires=cfg['requirements'].split(),
    extras_require={
        'dev': cfg['dev_requirements'].split(),
        'hub': ['datasets'],   # LeetCode rows from the hub (newfacade/LeetCodeDataset)
    },
    entry_points={'console_scripts': cfg.get('console_scripts', '').split()},
    zip_safe=False,
)
